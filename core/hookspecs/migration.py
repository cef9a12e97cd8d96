"""The migration slot (``--migration-mode``): room for the plugins of the migration issue."""

from __future__ import annotations

from typing import Any

from virtiofsd.hookspecs import hookspec


@hookspec(firstresult=True)
def virtiofsd_make_migration(config: Any) -> Any:
    """Return the device-state serializer of the chosen ``--migration-mode``.

    :param config: the frozen :class:`virtiofsd.config.Config`.
    :returns: the migration strategy object, or ``None`` while no migration plugin is selected.
    """
