# A hostile guest tries to leave the share.  The prelude sets TOKEN (a name no host file has),
# OUTSIDE (the host path of a folder next to the share, holding "secret") and SECRET_NAME.
# Every trick prints what it reached as a VALUE, so the host can check that nothing of its own
# ever came back; test_escape.py then looks at the host for anything written or created.
S=/mnt
E=$S/escape
check escape_mkdir mkdir $E

# --- symlinks: the guest kernel follows them, in the guest -------------------------------------
check symlink_to_root ln -s / $E/to-root
check symlink_climbing ln -s ../../../../../.. $E/climbing
check symlink_absolute_host_path ln -s "$OUTSIDE/$SECRET_NAME" $E/to-secret
check symlink_to_proc_root ln -s /proc/1/root $E/proc-root
value via_to_root cat $E/to-root$OUTSIDE/$SECRET_NAME
value via_climbing cat $E/climbing$OUTSIDE/$SECRET_NAME
value via_absolute cat $E/to-secret
value via_proc_root cat $E/proc-root$OUTSIDE/$SECRET_NAME
value via_host_magic_link cat $S/host-magic$OUTSIDE/$SECRET_NAME
value via_host_link_to_secret cat $S/host-link-to-secret
refuse write_via_host_link_to_secret sh -c "echo pwned > $S/host-link-to-secret"
check write_via_to_root sh -c "echo pwned > $E/to-root/tmp/$TOKEN-root"
check write_via_climbing sh -c "echo pwned > $E/climbing/tmp/$TOKEN-climbing"
refuse write_via_absolute_dir sh -c "echo pwned > $OUTSIDE/$TOKEN-absolute"

# --- .. from the root of the share stays in the guest ------------------------------------------
expect dotdot_of_share_is_guest_root "$(stat -c %i /)" stat -c %i $S/..
expect dotdot_chain_is_guest_root "$(stat -c %i /)" stat -c %i $S/escape/../../../..
value list_dotdot_of_share ls $S/..

# --- hard links and renames across the root --------------------------------------------------
refuse hardlink_to_guest_file ln /etc/passwd $E/passwd-link
check hardlink_inside sh -c "echo inside > $E/h1 && ln $E/h1 $E/h2"
expect hardlink_count 2 stat -c %h $E/h1
check rename_out_of_share_copies sh -c "echo moved > $E/m && mv $E/m /tmp/$TOKEN-moved && test ! -e $E/m"
check rename_into_share sh -c "echo in > /tmp/in && mv /tmp/in $E/in && test -f $E/in"
refuse rename_dir_into_own_child sh -c "mkdir -p $E/d/sub && mv $E/d $E/d/sub/"
refuse rename_share_root sh -c "mv $S $S/inside"

# --- /proc tricks: the guest's own /proc, never the daemon's ---------------------------------
check symlink_to_proc_self_fd ln -s /proc/self/fd/0 $E/fd0
value via_proc_self_fd sh -c "readlink $E/fd0"
value host_magic_listing ls $S/host-magic/
refuse host_fd_link_open sh -c "cat $S/host-fd-link"

# --- a FIFO and device nodes made by the guest, then opened -----------------------------------
check mkfifo mkfifo $E/fifo
check fifo_round_trip sh -c "(echo through-fifo > $E/fifo &) ; read line < $E/fifo; test \"\$line\" = through-fifo"
check mknod_char_null mknod $E/null c 1 3
check mknod_char_mem mknod $E/mem c 1 1
check mknod_block mknod $E/disk b 8 0
check open_null_node sh -c "echo x > $E/null"
value read_mem_node sh -c "dd if=$E/mem bs=64 count=1 2>&1 | od -c | head -2"
value read_disk_node sh -c "dd if=$E/disk bs=512 count=1 2>&1 | od -c | head -2"
check share_still_answers ls $E

# --- setuid binaries from a guest user ---------------------------------------------------------
check user_folder sh -c "mkdir $E/u && chown 1000:1000 $E/u"
check user_makes_setuid as_user "cp /bin/busybox $E/u/sh && chmod 4755 $E/u/sh"
expect user_setuid_owner "1000 4755" stat -c '%u %a' $E/u/sh
check user_keeps_a_setuid_binary as_user "cp /bin/busybox $E/u/keep && chmod 4755 $E/u/keep"
check chown_to_root_clears_setuid chown 0:0 $E/u/sh
expect setuid_gone_after_chown "0 755" stat -c '%u %a' $E/u/sh
check root_makes_setuid sh -c "cp /bin/busybox $E/rootsuid && chmod 4777 $E/rootsuid"
check user_writes_setuid_file as_user "echo appended >> $E/rootsuid"
expect setuid_gone_after_user_write 777 stat -c %a $E/rootsuid
refuse user_setuid_in_root_folder as_user "cp /bin/busybox $E/user-in-root"

check escape_sync sync
