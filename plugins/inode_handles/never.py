"""``--inode-file-handles=never``: hold every inode the guest knows as an O_PATH descriptor.

The simplest strategy and the Rust 1.13 default: no file handles, no CAP_DAC_READ_SEARCH, one
descriptor per known inode (which counts against RLIMIT_NOFILE).
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import ConfigError
from virtiofsd_plugins.inode_handles.store import InodeStore


@hookimpl
def virtiofsd_make_inode_store(config: Any) -> InodeStore:
    """A store whose root is the shared folder, opened O_PATH.

    :raises ConfigError: the shared folder cannot be opened as a folder.
    """
    try:
        return InodeStore.open_shared_dir(config.shared_dir)
    except OSError as exc:
        raise ConfigError(f"cannot open the shared directory {config.shared_dir!r}: "
                          f"{exc.strerror}") from exc
