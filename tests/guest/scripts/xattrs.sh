# Extended attributes, ACLs, labels and file capabilities on the share, with the host's own
# tools (attr, acl, libcap2-bin, coreutils, tar) run through in_host.  The daemon runs with
# --posix-acl and the map of test_xattrs.py; the host prepared /mnt/hosted with attributes of
# its own (user.host.secret and trusted.hostonly, which the map hides, and user.visible).
X=/mnt/xattrs

check xattr_setup mkdir $X
check xattr_file_types sh -c "echo data > $X/file && mkdir $X/dir && ln -s file $X/link && mkfifo $X/fifo && mknod $X/null c 1 3"

# --- setfattr / getfattr --absolute-names on every file type --------------------------------------------------
check setfattr_file in_host setfattr -n user.colour -v blue $X/file
expect getfattr_file blue in_host getfattr --absolute-names --only-values -n user.colour $X/file
check setfattr_dir in_host setfattr -n user.colour -v green $X/dir
expect getfattr_dir green in_host getfattr --absolute-names --only-values -n user.colour $X/dir
check setfattr_symlink in_host setfattr -h -n trusted.kind -v link $X/link
expect getfattr_symlink link in_host getfattr --absolute-names -h --only-values -n trusted.kind $X/link
refuse symlink_target_untouched in_host getfattr --absolute-names --only-values -n trusted.kind $X/file
check setfattr_fifo in_host setfattr -n trusted.kind -v fifo $X/fifo
expect getfattr_fifo fifo in_host getfattr --absolute-names --only-values -n trusted.kind $X/fifo
check setfattr_device in_host setfattr -n trusted.kind -v device $X/null
expect getfattr_device device in_host getfattr --absolute-names --only-values -n trusted.kind $X/null
refuse user_xattr_on_fifo_refused in_host setfattr -n user.colour -v red $X/fifo
check setfattr_remove in_host setfattr -x trusted.kind $X/null
refuse getfattr_removed in_host getfattr --absolute-names --only-values -n trusted.kind $X/null
expect listxattr_file "user.colour" in_host sh -c "getfattr --absolute-names -m - --absolute-names $X/file | grep -v '^#' | grep ."

# --- attr(1): user.* by default, trusted.* with -R -----------------------------------------
check attr_set in_host attr -q -s tool -V attr $X/file
expect attr_get attr in_host attr -q -g tool $X/file
check attr_set_root_on_symlink in_host attr -q -R -s tool -V root $X/link
expect attr_get_root_on_symlink root in_host attr -q -R -g tool $X/link
check attr_remove in_host attr -q -r tool $X/file
refuse attr_removed in_host attr -q -g tool $X/file

# --- the map hides the host's own attributes --------------------------------------------------
expect map_hides_host_attributes "user.visible" in_host sh -c "getfattr --absolute-names -m - --absolute-names /mnt/hosted | grep -v '^#' | grep ."
refuse map_hidden_name_unreadable in_host getfattr --absolute-names -n trusted.hostonly /mnt/hosted
expect map_visible_name_readable yes in_host getfattr --absolute-names --only-values -n user.visible /mnt/hosted

# --- SELinux label under the README recipe's map (stored as trusted.virtiofs.security.selinux)
check selinux_label_set in_host setfattr -n security.selinux -v guest_label $X/file
expect selinux_label_get guest_label in_host getfattr --absolute-names --only-values -n security.selinux $X/file

# --- cp -a and tar --xattrs round trips -------------------------------------------------------
check cp_a in_host sh -c "mkdir $X/copied && cp -a $X/dir $X/file $X/link $X/copied/"
expect cp_a_file blue in_host getfattr --absolute-names --only-values -n user.colour $X/copied/file
expect cp_a_dir green in_host getfattr --absolute-names --only-values -n user.colour $X/copied/dir
expect cp_a_label guest_label in_host getfattr --absolute-names --only-values -n security.selinux $X/copied/file
expect cp_a_symlink link in_host getfattr --absolute-names -h --only-values -n trusted.kind $X/copied/link
check tar_create in_host tar --xattrs --xattrs-include=* -cf /tmp/x.tar -C $X file dir
check tar_extract in_host sh -c "mkdir $X/untarred && tar --xattrs --xattrs-include=* -xf /tmp/x.tar -C $X/untarred"
expect tar_file blue in_host getfattr --absolute-names --only-values -n user.colour $X/untarred/file
expect tar_dir green in_host getfattr --absolute-names --only-values -n user.colour $X/untarred/dir

# --- POSIX ACLs, default ACL inheritance, and the umask ---------------------------------------
check acl_setfacl in_host setfacl -m u:1234:rw $X/file
expect acl_getfacl "user:1234:rw-" in_host sh -c "getfacl -cp $X/file | grep 1234"
check acl_default_setup in_host sh -c "mkdir $X/inherit && setfacl -d -m u::rwx,g::rwx,o::rx,u:1234:rwx $X/inherit"
check acl_create_under_default in_host sh -c "umask 077 && mkdir $X/inherit/sub && touch $X/inherit/new"
expect acl_default_inherited "default:user:1234:rwx" in_host sh -c "getfacl -cp $X/inherit/sub | grep default:user:1234"
expect acl_access_inherited "user:1234:rwx" in_host sh -c "getfacl -cp $X/inherit/new | grep ^user:1234 | cut -d'#' -f1 | tr -d '\t'"
expect acl_default_replaces_umask "775 664" in_host sh -c "echo \$(stat -c %a $X/inherit/sub $X/inherit/new)"
expect umask_applies_without_default_acl "700 600" in_host sh -c "umask 077 && mkdir $X/plain_dir && touch $X/plain_file && echo \$(stat -c %a $X/plain_dir $X/plain_file)"
check acl_remove in_host setfacl -b $X/file
refuse acl_removed in_host sh -c "getfacl -cp $X/file | grep -q 1234"

# --- CVE-2021-20263: a (remapped) file capability is dropped when the file is written --------
# Here the guest kernel drops it before the cached write (a REMOVEXATTR the map renames).
check setcap in_host sh -c "cp /bin/true $X/capped && setcap cap_net_raw+ep $X/capped"
expect getcap_set "$X/capped cap_net_raw=ep" in_host getcap $X/capped
check write_capped in_host sh -c "echo >> $X/capped"
expect getcap_after_write "" in_host getcap $X/capped
# On the --cache never share (tag xattrnever, same options) the write is direct I/O, which the
# guest kernel sends without dropping anything: only the daemon can clear the capability.
N=/tmp/xattrnever
check never_mount sh -c "mkdir -p /host$N && mount -t virtiofs xattrnever /host$N"
expect setcap_never "$N/capped cap_net_raw=ep" in_host sh -c "cp /bin/true $N/capped && setcap cap_net_raw+ep $N/capped && getcap $N/capped"
expect getcap_after_write_never "" in_host sh -c "echo >> $N/capped && getcap $N/capped"
check never_umount umount /host$N
