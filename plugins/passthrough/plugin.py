"""Entry point ``passthrough`` (group ``virtiofsd.fs``): the bootstrap of the passthrough file
system.

The module itself holds no state.  Its configure hook asks the inode-store slot for a store (the
``--inode-file-handles`` strategy), builds :class:`~.state.PassthroughState` and registers the
operation objects, which share it:

- ``passthrough.entry_ops``: INIT/DESTROY, LOOKUP, FORGET, GETATTR, SETATTR, READLINK, ACCESS,
  STATFS, and the unconfigure hook that releases the state;
- ``passthrough.dir_ops``: creating, removing, renaming, reading folders;
- ``passthrough.file_ops``: open files (closing one tells the lock operations);
- ``passthrough.locks``: POSIX record locks and flock(2), held on the host;
- ``passthrough.xattrs``: extended attributes, when ``--xattr`` (or an option implying it) is
  on, and ``passthrough.capability_guard`` when ``--xattrmap`` renames ``security.capability``;
- ``passthrough.migration_ops``: saving and restoring that state (when a ``--migration-mode``
  strategy is loaded).

The mapping plugin (``--xattrmap``) configures itself first (``tryfirst``), so the names it maps
are known here.
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import ConfigError, FuseError
from virtiofsd.sandbox.syscalls import FLOCK_CALLS, XATTR_CALLS
from virtiofsd_plugins.passthrough.dir_ops import DirOps
from virtiofsd_plugins.passthrough.entry_ops import EntryOps
from virtiofsd_plugins.passthrough.file_ops import FileOps
from virtiofsd_plugins.passthrough.locks import LockOps
from virtiofsd_plugins.passthrough.migration_ops import MigrationOps
from virtiofsd_plugins.passthrough.state import PassthroughState
from virtiofsd_plugins.passthrough.xattrs import SECURITY_CAPABILITY, CapabilityGuard, XattrOps


@hookimpl
def virtiofsd_configure(config: Any, pm: Any) -> None:
    """Build the state and register the operations.

    :raises ConfigError: no plugin provides an inode store, or ``/proc/self/fd`` is missing.
    """
    store = pm.hook.virtiofsd_make_inode_store(config=config)
    if store is None:
        raise ConfigError("the passthrough file system needs an inode store "
                          "(--inode-file-handles): no plugin provides one")
    state = PassthroughState.create(config, store, pm.hook.virtiofsd_xattr_to_host)
    locks = LockOps(state)
    pm.register(EntryOps(state), name="passthrough.entry_ops")
    pm.register(DirOps(state), name="passthrough.dir_ops")
    pm.register(FileOps(state, locks), name="passthrough.file_ops")
    pm.register(locks, name="passthrough.locks")
    if config.xattr:
        pm.register(XattrOps(state, pm.hook.virtiofsd_xattr_to_guest, config.posix_acl),
                    name="passthrough.xattrs")
        capability = _remapped_capability_name(state)
        if capability is not None:
            pm.register(CapabilityGuard(state, capability), name="passthrough.capability_guard")
    strategy = pm.hook.virtiofsd_make_migration(config=config)
    if strategy is not None:
        pm.register(MigrationOps(state, strategy, locks), name="passthrough.migration_ops")


@hookimpl
def virtiofsd_seccomp_syscalls(config: Any) -> set[str]:
    """The extended-attribute calls with ``--xattr`` (which ``--posix-acl``, ``--security-label``
    and ``--xattrmap`` imply), flock(2) with ``-o flock``; POSIX locks need only ``fcntl``,
    which every configuration has."""
    names: set[str] = set()
    if config.xattr:
        names |= XATTR_CALLS
    if config.flock:
        names |= FLOCK_CALLS
    return names


def _remapped_capability_name(state: PassthroughState) -> bytes | None:
    """The host name ``security.capability`` is stored under when the map renames it; ``None``
    when it is kept (the host kernel guards it) or refused (the guest cannot set it)."""
    try:
        host_name = state.xattr_name_to_host(None, SECURITY_CAPABILITY)
    except FuseError:
        return None
    return None if host_name == SECURITY_CAPABILITY else host_name
