"""Hooks around the life of the daemon: configuration and shutdown."""

from __future__ import annotations

from typing import Any

from virtiofsd.hookspecs import hookspec


@hookspec
def virtiofsd_configure(config: Any, pm: Any) -> None:
    """Build the plugin's state from the final configuration.

    Called once, after every selected plugin is registered and before the daemon accepts.  A
    stateful plugin builds its objects here and registers them with ``pm.register(obj, name)``
    (the entry-point module itself stays a thin bootstrap).  Slot hooks such as
    :func:`~virtiofsd.hookspecs.inode_store.virtiofsd_make_inode_store` may be called from here.

    Runs inside the sandbox (``--sandbox``): ``config.shared_dir`` is the shared folder as the
    process now sees it (``/`` in the namespace and chroot sandboxes), ``/proc`` is reachable
    only through :mod:`virtiofsd.sandbox`, and no module can be imported any more (its path
    would lead into the shared folder): import at module level.

    :param config: the frozen :class:`virtiofsd.config.Config`.
    :param pm: the plugin manager, to register objects and call other hooks.
    :raises virtiofsd.errors.ConfigError: the configuration is unusable for this plugin; the
        daemon exits with the message before it listens.
    """


@hookspec
def virtiofsd_unconfigure(config: Any) -> None:
    """Release what :func:`virtiofsd_configure` built; called once when the daemon stops."""
