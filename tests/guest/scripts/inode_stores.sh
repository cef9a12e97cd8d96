# Inode stores in a real guest (test_inode_stores.py).  The host prepared tree/ (TREE_FILES
# files), hello.txt, held.txt and, when SUBMOUNTS=1, two tmpfs mounted on a/ and b/ whose files
# have equal inode numbers (a/same 1000 bytes with a hard link a/same2, b/same 2000 bytes).
# Host tools (GNU find, du, cp, tar, python3) run through in_host, where the share is /mnt too.
M=/mnt

expect read_before_walk "hello" cat $M/hello.txt

if [ "$SUBMOUNTS" = 1 ]; then
    check submounts_have_their_own_st_dev sh -c "[ \$(stat -c %d $M/a/same) != \$(stat -c %d $M/b/same) ]"
    expect submounts_equal_inode_numbers yes sh -c "[ \$(stat -c %i $M/a/same) = \$(stat -c %i $M/b/same) ] && echo yes"
    # Functions, not "sh -c", so that in_host (a function of lib.sh) is in reach.
    same_inum() { echo $(in_host find /mnt/a /mnt/b -inum $(stat -c %i $M/a/same) | sort); }
    samefile() { echo $(in_host find /mnt -samefile /mnt/a/same | sort); }
    du_total() { in_host du -cb --apparent-size /mnt/a/same /mnt/b/same | tail -1 | cut -f1; }
    copied() { echo $(in_host stat -c %s /tmp/a/same /tmp/b/same) $(in_host stat -c %h /tmp/b/same); }
    # One hard link, within a/ (a/same2 and a/same, in either order), none into b/.
    tar_links() {
        in_host tar -cf /tmp/t.tar -C /mnt a b &&
            in_host tar -tvf /tmp/t.tar | grep ' link to ' |
            sed 's/.* \([ab]\)\/same2* link to \([ab]\)\/.*/\1\2/'
    }
    expect find_inum_lists_the_file_on_each_submount "/mnt/a/same /mnt/a/same2 /mnt/b/same" same_inum
    expect find_samefile_stays_on_its_submount "/mnt/a/same /mnt/a/same2" samefile
    expect du_counts_both_files 3000 du_total
    check cp_a_copies_both in_host cp -a /mnt/a /mnt/b /tmp/
    expect cp_a_keeps_contents_apart "1000 2000 1" copied
    expect tar_links_only_the_real_hard_link aa tar_links
    check sync_f_on_submount in_host sync -f /mnt/b/same
fi

if [ "$UNLINK" = 1 ]; then
    # The host renames then unlinks held.txt between our open and our write.
    expect open_unlink_write_read "written after unlink 0" in_host python3 -c '
import os, time
fd = os.open("/mnt/held.txt", os.O_RDWR)
open("/mnt/unlink-request", "w").close()
for _ in range(600):
    if os.path.exists("/mnt/unlink-done"):
        break
    time.sleep(0.1)
os.pwrite(fd, b"written after unlink", 0)
print(os.pread(fd, 100, 0).decode(), os.fstat(fd).st_nlink)'
fi

walk_start=$(date +%s)
find $M/tree -exec stat -c %i {} + > /tmp/walk.out 2> /tmp/walk.err
walk_status=$?
value walk_seconds echo $(( $(date +%s) - walk_start ))
value walk_stats sh -c "wc -l < /tmp/walk.out"
value walk_enfile sh -c "grep -c 'Too many open files in system' /tmp/walk.err"
value walk_other_errors sh -c "grep -vc 'Too many open files in system' /tmp/walk.err"
value walk_status echo $walk_status
# Whatever the walk met, the daemon still serves: what the guest knows (a GETATTR needs no new
# descriptor, an OPEN may meet a spent budget), and everything once the guest forgets.
expect stat_after_walk 6 stat -c %s $M/hello.txt
check forget_everything sh -c "sync && echo 3 > /proc/sys/vm/drop_caches && sleep 1"
expect read_after_forgetting "hello" cat $M/hello.txt
expect lookup_after_forgetting f0 sh -c "ls $M/tree/d00 | head -1"
