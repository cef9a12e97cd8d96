# Four readers, one per vCPU, each reading its own file with O_DIRECT (with --cache never every
# read is a FUSE READ).  Linux 6.11+ sends a request on the queue mapped to the CPU it runs on.
M=/mnt
value guest_cpus nproc
for cpu in 0 1 2 3; do
    taskset -c $cpu dd if=$M/reader$cpu.bin of=/dev/null bs=4096 iflag=direct 2>/dev/null &
done
wait
check readers_done true
