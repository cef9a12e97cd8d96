# O_DIRECT through the share.  The host prepared direct.bin (64 KiB of a known pattern), so
# every open here is a FUSE OPEN of an existing file (never CREATE).  DIRECT_IO_ALLOWED says
# whether the daemon was started with --allow-direct-io.
M=/mnt
value direct_read_sha256 sh -c "dd if=$M/direct.bin bs=4096 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1"
check direct_read dd if=$M/direct.bin of=/dev/null bs=4096 iflag=direct
check direct_write dd if=/dev/zero of=$M/direct.bin bs=4096 count=2 seek=1 oflag=direct conv=notrunc
expect direct_write_size 65536 stat -c %s $M/direct.bin
value unaligned_write sh -c "dd if=/dev/zero of=$M/direct.bin bs=1000 count=1 seek=20 oflag=direct conv=notrunc 2>&1; echo exit \$?"
