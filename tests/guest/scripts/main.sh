# The main guest workload: everyday shell tools on the virtio-fs share at /mnt.
# The host prepared hello.txt (mode 640), big.bin (256 MiB) and tree/ (TREE_FILES files);
# everything the guest writes goes under /mnt/work, where test_main_workload.py looks after the boot.
M=/mnt
W=$M/work

check work_mkdir mkdir $W

# --- reading what the host prepared ---------------------------------------------------------
expect ls_root "big.bin hello.txt tree work" sh -c "echo \$(ls $M)"
expect cat_host_file "hello from the host" cat $M/hello.txt
expect stat_host_file "640 0:0 20 regular file" stat -c '%a %u:%g %s %F' $M/hello.txt
expect ls_l_host_file "-rw-r-----" sh -c "ls -l $M/hello.txt | cut -c1-10"
expect readdir_large_dir 100 sh -c "ls $M/tree/d00 | wc -l"
expect find_count "$TREE_FILES" sh -c "find $M/tree -type f | wc -l"
expect find_name "$M/tree/d07/f042" find $M/tree -name f042 -path '*d07*'
check df_statfs df -k $M

# --- a 256 MiB copy, read back after dropping the guest page cache --------------------------
check cp_big cp $M/big.bin $W/big.copy
check drop_caches sh -c "sync && echo 3 > /proc/sys/vm/drop_caches"
expect big_copy_size 268435456 stat -c %s $W/big.copy
value big_copy_sha256 sh -c "sha256sum $W/big.copy | cut -d' ' -f1"
value du_big_kib sh -c "du -k $W/big.copy | cut -f1"

# --- echo > and >> ----------------------------------------------------------------------------
check echo_create sh -c "echo first > $W/notes.txt"
check echo_append sh -c "echo second >> $W/notes.txt"
expect cat_after_append "first
second" cat $W/notes.txt
check echo_overwrite sh -c "echo replaced > $W/overwritten.txt && echo again > $W/overwritten.txt"
expect cat_after_overwrite again cat $W/overwritten.txt
check write_at_offset sh -c "printf 0123456789 > $W/offset.txt && printf XY | dd of=$W/offset.txt bs=1 seek=3 conv=notrunc 2>/dev/null"
expect cat_after_offset_write 012XY56789 cat $W/offset.txt

# --- mkdir -p, rm -r, rmdir, rm ------------------------------------------------------------------
check mkdir_p mkdir -p $W/a/b/c/d
check mkdir_p_result test -d $W/a/b/c/d
check mkdir_p_existing mkdir -p $W/a/b/c/d
refuse mkdir_existing_refused mkdir $W/a
check rm_r_setup sh -c "mkdir -p $W/doomed/x/y && echo 1 > $W/doomed/x/f && echo 2 > $W/doomed/x/y/g && ln -s f $W/doomed/x/l"
check rm_r rm -r $W/doomed
refuse rm_r_gone test -e $W/doomed
check rmdir_setup mkdir $W/empty_dir
check rmdir rmdir $W/empty_dir
refuse rmdir_non_empty_refused rmdir $W/a
check rm_file sh -c "echo bye > $W/unlinked.txt && rm $W/unlinked.txt && ! test -e $W/unlinked.txt"

# --- mv: files and folders, renamed and over existing ones -----------------------------------
check mv_file sh -c "echo moved > $W/mv_src.txt && mv $W/mv_src.txt $W/mv_dst.txt"
expect mv_file_result moved cat $W/mv_dst.txt
check mv_file_over_existing sh -c "echo new > $W/over_src.txt && echo old > $W/over_dst.txt && mv $W/over_src.txt $W/over_dst.txt"
expect mv_file_over_existing_result "new" sh -c "! test -e $W/over_src.txt && cat $W/over_dst.txt"
check mv_file_to_other_dir sh -c "echo travel > $W/traveller.txt && mv $W/traveller.txt $W/a/b/"
expect mv_file_to_other_dir_result travel cat $W/a/b/traveller.txt
check mv_dir sh -c "mkdir -p $W/dir_src/sub && echo inside > $W/dir_src/sub/f && mv $W/dir_src $W/dir_dst"
expect mv_dir_result inside cat $W/dir_dst/sub/f
check mv_dir_into_existing sh -c "mkdir $W/dir_into && mv $W/dir_dst $W/dir_into"
expect mv_dir_into_existing_result inside cat $W/dir_into/dir_dst/sub/f
check mv_dir_over_empty_dir sh -c "mkdir -p $W/dirover_src/kept $W/dirover_dst && mv -T $W/dirover_src $W/dirover_dst"
check mv_dir_over_empty_dir_result sh -c "test -d $W/dirover_dst/kept && ! test -e $W/dirover_src"
refuse mv_dir_over_non_empty_refused sh -c "mkdir -p $W/full_src/x $W/full_dst/y && mv -T $W/full_src $W/full_dst"

# --- ln, ln -s, readlink ------------------------------------------------------------------------
check ln_hard sh -c "echo linked > $W/target.txt && ln $W/target.txt $W/hard.txt"
expect ln_hard_nlink 2 stat -c %h $W/target.txt
check ln_hard_same_inode sh -c "test \$(stat -c %i $W/target.txt) = \$(stat -c %i $W/hard.txt)"
check ln_symlink ln -s target.txt $W/sym.txt
expect readlink_symlink target.txt readlink $W/sym.txt
expect cat_through_symlink linked cat $W/sym.txt
expect stat_symlink "symbolic link" stat -c %F $W/sym.txt
check ln_symlink_dangling ln -s /nowhere/at/all $W/dangling
expect readlink_dangling /nowhere/at/all readlink $W/dangling
refuse cat_dangling_refused cat $W/dangling
check ln_symlink_dir ln -s a/b $W/dirlink
expect ls_through_dir_symlink "c traveller.txt" sh -c "echo \$(ls $W/dirlink/)"

# --- chmod, chown, touch -d, truncate -----------------------------------------------------------
check chmod sh -c "echo m > $W/mode.txt && chmod 751 $W/mode.txt"
expect chmod_result 751 stat -c %a $W/mode.txt
check chmod_dir sh -c "mkdir $W/private && chmod 700 $W/private"
expect chmod_dir_result 700 stat -c %a $W/private
check chown sh -c "echo o > $W/owned.txt && chown 1234:2345 $W/owned.txt"
expect chown_result 1234:2345 stat -c %u:%g $W/owned.txt
check chown_symlink_itself sh -c "ln -s owned.txt $W/owned_link && chown -h 1234:2345 $W/owned_link"
check touch_d_create touch -d "2001-02-03 04:05:06" $W/dated.txt
expect touch_d_create_result 981173106 stat -c %Y $W/dated.txt
check touch_d_existing touch -d "2001-02-03 04:05:06" $W/notes.txt
expect touch_d_existing_result 981173106 stat -c %Y $W/notes.txt
check truncate_shrink sh -c "printf 0123456789 > $W/trunc.txt && truncate -s 4 $W/trunc.txt"
expect truncate_shrink_result 0123 cat $W/trunc.txt
check truncate_grow truncate -s 1M $W/grown.txt
expect truncate_grow_result 1048576 stat -c %s $W/grown.txt
expect truncate_grow_zeros 0 sh -c "tr -d '\\000' < $W/grown.txt | wc -c"

# --- du --------------------------------------------------------------------------------------------
check du_tree du -s -k $M/tree

# --- tar c and x of the large tree ------------------------------------------------------------
check tar_c sh -c "cd $M && tar cf $W/tree.tar tree"
check tar_x sh -c "mkdir $W/untar && tar xf $W/tree.tar -C $W/untar"
expect tar_x_count "$TREE_FILES" sh -c "find $W/untar/tree -type f | wc -l"
check tar_x_identical diff -r $M/tree $W/untar/tree

# --- mkfifo --------------------------------------------------------------------------------------------
check mkfifo mkfifo $W/fifo
expect mkfifo_type fifo stat -c %F $W/fifo
expect fifo_roundtrip through sh -c "(echo through > $W/fifo &); cat $W/fifo"

# --- an ordinary (uid 1000) user -----------------------------------------------------------------
check user_home sh -c "mkdir $W/home && chown 1000:1000 $W/home"
check user_creates as_user "echo mine > $W/home/mine.txt && mkdir $W/home/mydir && ln -s mine.txt $W/home/mylink && mkfifo $W/home/myfifo"
expect user_creates_owner "1000:1000 1000:1000 1000:1000 1000:1000" sh -c "echo \$(stat -c %u:%g $W/home/mine.txt $W/home/mydir $W/home/myfifo) \$(stat -c %u:%g $W/home/mylink)"
check user_renames as_user "echo r > $W/home/r1 && mv $W/home/r1 $W/home/r2"
refuse user_denied_in_root_dir as_user "echo x > $W/denied.txt"
refuse user_denied_chown as_user "chown 0:0 $W/home/mine.txt"
refuse user_denied_read_private as_user "ls $W/private"
check user_umask_honoured as_user "umask 027 && echo u > $W/home/umask.txt"
expect user_umask_result 640 stat -c %a $W/home/umask.txt
