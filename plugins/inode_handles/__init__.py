"""The ``--inode-file-handles`` strategies: how the daemon holds on to the inodes the guest knows.

:mod:`.store` is the table every strategy shares (node ids, lookup counts, the indexes by file
handle and by device, inode number and mount id), :mod:`.mount_fds` the descriptors
``open_by_handle_at`` needs, :mod:`.budget` the guest's share of RLIMIT_NOFILE.  Each strategy is
an entry point of the group ``virtiofsd.inode_store`` whose hook ``virtiofsd_make_inode_store``
builds that table: :mod:`.never` (O_PATH descriptors), :mod:`.prefer` (file handles where they
work, the default) and :mod:`.mandatory` (file handles or nothing).  See docs/inode-stores.md.
"""
