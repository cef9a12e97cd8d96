"""``--inode-file-handles=never``: hold every inode the guest knows as an O_PATH descriptor.

No file handles, no CAP_DAC_READ_SEARCH, one descriptor per known inode (which counts against
the guest's descriptor budget under RLIMIT_NOFILE: past it, lookups fail with ENFILE).
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd_plugins.inode_handles.store import HandleUse, InodeStore


@hookimpl
def virtiofsd_make_inode_store(config: Any) -> InodeStore:
    """A store whose root is the shared folder, opened O_PATH.

    :raises ConfigError: the shared folder cannot be opened as a folder.
    """
    return InodeStore.open_shared_dir(config.shared_dir, HandleUse.NEVER)
