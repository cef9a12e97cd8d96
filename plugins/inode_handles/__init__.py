"""The ``--inode-file-handles`` strategies: how the daemon holds on to the inodes the guest knows.

:mod:`.store` is the table every strategy shares (node ids, lookup counts, the index by device,
inode number and mount id).  Each strategy is an entry point of the group
``virtiofsd.inode_store`` whose hook ``virtiofsd_make_inode_store`` builds that table:
:mod:`.never` holds an O_PATH descriptor per inode; ``prefer`` and ``mandatory`` (file handles)
come in a later issue.
"""
