# Live migration workload.  The host prepared held/ (a log to append to, data.bin to read, a file
# it removes itself mid-migration) and tree/; it creates $M/migrated once the migration ended
# (the guest then runs on the destination, or still on the source when the migration failed).
# Until then one process appends to a held file and another walks the tree, so requests are in
# flight at the switch-over.  A third process holds a POSIX write lock and an flock on
# held/locked.bin across the migration (/lockprobe hold), then moves them and exits; the host
# checks the locks held after the switch-over and, once the guest reports the holder's exit,
# released, and then creates $M/release_checked.
M=/mnt
exec 3>>$M/held/log.txt
exec 4<$M/held/data.bin
exec 6<$M/held/removed_by_host.txt
echo "unlinked content" > $M/held/unlinked.txt
exec 5<$M/held/unlinked.txt
rm $M/held/unlinked.txt
dd bs=4096 count=32 <&4 > /tmp/part1 2>/dev/null
( i=0; while [ ! -e $M/migrated ]; do echo "line $i" >&3; i=$((i+1)); done; echo "VALUE writer_lines $i" ) &
WRITER=$!
( n=0; while [ ! -e $M/migrated ]; do find $M/tree > /dev/null; n=$((n+1)); done; echo "VALUE walks $n" ) &
WALKER=$!
/lockprobe hold $M/held/locked.bin $M/migrated &
LOCKER=$!
echo "VALUE ready 1"
while [ ! -e $M/migrated ]; do sleep 0.1; done
wait $WRITER
wait $WALKER
wait $LOCKER
echo "VALUE locker_exited 1"
while [ ! -e $M/release_checked ]; do sleep 0.1; done
check held_write_after sh -c 'for i in 1 2 3; do echo "after $i" >&3 || exit 1; done'
dd bs=4096 <&4 > /tmp/part2 2>/dev/null
value data_sha256 sh -c "cat /tmp/part1 /tmp/part2 | sha256sum | cut -d' ' -f1"
value unlinked_read sh -c 'cat <&5 2>&1; echo "exit $?"'
value removed_read sh -c 'cat <&6 2>&1; echo "exit $?"'
value tree_files sh -c "find $M/tree -type f | wc -l"
check create_after sh -c "echo created > $M/after.txt"
