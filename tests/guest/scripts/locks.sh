# Locks between guest processes and against the host, by the static /lockprobe (built on the
# host from tests/guest/programs/lockprobe.c).  The host holds a write lock on
# /mnt/host-locked and flock LOCK_EX on /mnt/host-flocked for the whole boot.
/lockprobe /mnt
