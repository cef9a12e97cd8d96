# --allow-mmap with --cache never, in a guest whose kernel knows DIRECT_IO_ALLOW_MMAP (Linux 6.6+).
# /mnt is served with --cache never alone, the fsmmap tag with --cache never --allow-mmap; the
# host put mapped.bin (8 KiB of zeros) in both.  The probe maps the file MAP_SHARED read-write,
# writes through the mapping and msyncs, and prints "mapped" or the errno's name; the host
# then reads what reached each file.
MMAP_PROBE='
import errno, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    mapping = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
except OSError as error:
    sys.exit(print(errno.errorcode[error.errno]))
mapping[100:110] = b"via-mmap!!"
mapping.flush()
mapping.close()
os.close(fd)
print("mapped")
'
mkdir -p /host/tmp/mmap && mount -t virtiofs fsmmap /host/tmp/mmap || echo "GUEST-ERROR mount fsmmap failed"
value mmap_never in_host python3 -c "$MMAP_PROBE" /mnt/mapped.bin
value mmap_never_allow_mmap in_host python3 -c "$MMAP_PROBE" /tmp/mmap/mapped.bin
umount /host/tmp/mmap
