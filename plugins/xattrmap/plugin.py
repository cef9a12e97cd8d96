"""Entry point ``xattrmap`` (group ``virtiofsd.policy``), loaded when ``--xattrmap`` is given.

Its configure hook parses the rule set (a malformed one stops the daemon at start with a message
naming the rule) and registers a :class:`XattrMapPolicy`, which answers the mapping hooks of
:mod:`virtiofsd.hookspecs.xattr` for the passthrough file system's xattr operations.
"""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import ConfigError, FuseError
from virtiofsd_plugins.xattrmap.rules import Refused, XattrMap, XattrMapError


class XattrMapPolicy:
    """The mapping hooks, answered from one parsed rule set."""

    def __init__(self, xattr_map: XattrMap) -> None:
        self._map = xattr_map

    @hookimpl
    def virtiofsd_xattr_to_host(self, req: Any, name: bytes) -> Any:
        mapped = self._map.to_host(name)
        if isinstance(mapped, Refused):
            raise FuseError(mapped.errno, f"xattr {name!r} refused by --xattrmap")
        return mapped

    @hookimpl
    def virtiofsd_xattr_to_guest(self, req: Any, name: bytes) -> Any:
        mapped = self._map.to_guest(name)
        return mapped if mapped else False


@hookimpl(tryfirst=True)
def virtiofsd_configure(config: Any, pm: Any) -> None:
    """Parse and register first, so the file system's configure hook can already map names.

    :raises ConfigError: the rule set is malformed (the message names the rule).
    """
    try:
        xattr_map = XattrMap.parse(config.xattrmap)
    except XattrMapError as err:
        raise ConfigError(str(err)) from None
    pm.register(XattrMapPolicy(xattr_map), name="xattrmap.policy")
