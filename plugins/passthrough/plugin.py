"""Entry point ``passthrough`` (group ``virtiofsd.fs``): the bootstrap of the passthrough file
system.

The module itself holds no state.  Its configure hook asks the inode-store slot for a store (the
``--inode-file-handles`` strategy), builds :class:`~.state.PassthroughState` and registers the
three operation objects, which share it:

- ``passthrough.entry_ops``: INIT/DESTROY, LOOKUP, FORGET, GETATTR, SETATTR, READLINK, ACCESS,
  STATFS, and the unconfigure hook that releases the state;
- ``passthrough.dir_ops``: creating, removing, renaming, reading folders;
- ``passthrough.file_ops``: open files;
- ``passthrough.locks``: POSIX record locks and flock(2), held on the host.
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import ConfigError
from virtiofsd_plugins.passthrough.dir_ops import DirOps
from virtiofsd_plugins.passthrough.entry_ops import EntryOps
from virtiofsd_plugins.passthrough.file_ops import FileOps
from virtiofsd_plugins.passthrough.locks import LockOps
from virtiofsd_plugins.passthrough.state import PassthroughState


@hookimpl
def virtiofsd_configure(config: Any, pm: Any) -> None:
    """Build the state and register the operations.

    :raises ConfigError: no plugin provides an inode store, or ``/proc/self/fd`` is missing.
    """
    store = pm.hook.virtiofsd_make_inode_store(config=config)
    if store is None:
        raise ConfigError("the passthrough file system needs an inode store "
                          "(--inode-file-handles): no plugin provides one")
    state = PassthroughState.create(config, store)
    pm.register(EntryOps(state), name="passthrough.entry_ops")
    pm.register(DirOps(state), name="passthrough.dir_ops")
    pm.register(FileOps(state), name="passthrough.file_ops")
    pm.register(LockOps(state), name="passthrough.locks")
