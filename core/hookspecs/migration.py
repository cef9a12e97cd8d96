"""Live migration: the ``--migration-mode`` slot and the device-state save/load hooks.

QEMU moves the daemon's state from the source to the destination through SET_DEVICE_STATE_FD
(see :mod:`virtiofsd.io.device_state`): the source calls :func:`virtiofsd_migration_save` once
the guest is stopped, the destination calls :func:`virtiofsd_migration_load` before it starts.
"""

from __future__ import annotations

from typing import Any

from virtiofsd.hookspecs import hookspec


@hookspec(firstresult=True)
def virtiofsd_make_migration(config: Any) -> Any:
    """Return the strategy of the chosen ``--migration-mode`` (entry point of the group
    ``virtiofsd.migration``: ``find-paths`` or ``file-handles``): the object that tells the
    destination how to find each inode, see
    :class:`virtiofsd_plugins.migration.strategies.MigrationStrategy`.

    :param config: the frozen :class:`virtiofsd.config.Config`.
    """


@hookspec(firstresult=True)
def virtiofsd_migration_save(session: Any) -> bytes | None:
    """Serialize the file system's state (every inode the guest holds, every open handle) and
    the FUSE ``session`` into the device-state stream.  Called with every ring stopped.

    :raises Exception: the state cannot be saved; CHECK_DEVICE_STATE then reports the failure.
    """


@hookspec(firstresult=True)
def virtiofsd_migration_load(data: bytes) -> Any:
    """Restore the state a source saved; return the FUSE session to install.

    :raises Exception: the stream is foreign or broken, or (``--migration-on-error=abort``) an
        inode cannot be found again; the destination's CHECK_DEVICE_STATE fails and QEMU aborts
        the migration.
    """


@hookspec
def virtiofsd_migration_resumed() -> None:
    """The rings start again on a daemon that saved its state: the migration failed and this
    guest carries on here, so take back what the save let go of (the host locks, which the
    source releases for the destination to take).  Called on the vhost-user thread before the
    first ring starts serving."""
