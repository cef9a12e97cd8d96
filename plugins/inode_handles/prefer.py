"""``--inode-file-handles=prefer`` (alias ``fallback``), the default: file handles where they
work, O_PATH descriptors elsewhere.

At start the store makes a handle of the shared folder and opens it again; when that fails (no
CAP_DAC_READ_SEARCH, a file system without export support) it warns once and holds every inode
as a descriptor, as ``never`` does.  Afterwards each inode on a file system that cannot make
handles (a procfs or some FUSE mount under the share) is held as a descriptor, silently.
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.sandbox.syscalls import FILE_HANDLE_CALLS
from virtiofsd_plugins.inode_handles.store import HandleUse, InodeStore


@hookimpl
def virtiofsd_make_inode_store(config: Any) -> InodeStore:
    """A store of file handles, or of descriptors when handles do not work here.

    :raises ConfigError: the shared folder cannot be opened as a folder.
    """
    return InodeStore.open_shared_dir(config.shared_dir, HandleUse.PREFER)


@hookimpl
def virtiofsd_seccomp_syscalls(config: Any) -> frozenset[str]:
    """Every lookup makes a file handle (name_to_handle_at), and an inode is reopened from
    it (open_by_handle_at)."""
    return FILE_HANDLE_CALLS
