"""``--inode-file-handles=mandatory``: every inode is a file handle, never a descriptor.

The daemon refuses to start when a handle of the shared folder cannot be made and opened again
(no CAP_DAC_READ_SEARCH, a file system without export support), and a lookup of an inode on a
file system that cannot make handles fails with that error (EOPNOTSUPP) instead of costing a
descriptor.
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.sandbox.syscalls import FILE_HANDLE_CALLS
from virtiofsd_plugins.inode_handles.store import HandleUse, InodeStore


@hookimpl
def virtiofsd_make_inode_store(config: Any) -> InodeStore:
    """A store of file handles only.

    :raises ConfigError: the shared folder cannot be opened, or file handles do not work on it.
    """
    return InodeStore.open_shared_dir(config.shared_dir, HandleUse.MANDATORY)


@hookimpl
def virtiofsd_seccomp_syscalls(config: Any) -> frozenset[str]:
    """Every lookup makes a file handle (name_to_handle_at), and an inode is reopened from
    it (open_by_handle_at)."""
    return FILE_HANDLE_CALLS
