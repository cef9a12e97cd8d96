"""The inode store slot: how the daemon holds on to the inodes the guest knows."""

from __future__ import annotations

from typing import Any

from virtiofsd.hookspecs import hookspec


@hookspec(firstresult=True)
def virtiofsd_make_inode_store(config: Any) -> Any:
    """Return the inode store of the strategy the user chose with ``--inode-file-handles``.

    Exactly one plugin implements this slot in a running daemon (the entry point of the group
    ``virtiofsd.inode_store`` whose name the user gave: ``never``, ``prefer`` or ``mandatory``).
    The store maps FUSE node ids to host inodes and counts the guest's lookups; its interface is
    :class:`virtiofsd_plugins.inode_handles.store.InodeStore`.

    :param config: the frozen :class:`virtiofsd.config.Config`.
    :returns: the store object (never ``None``).
    :raises virtiofsd.errors.ConfigError: the strategy cannot work here (``mandatory`` without
        file handle support).
    """
