"""Entry point ``find-paths`` (group ``virtiofsd.migration``): migrate inodes by their paths."""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd_plugins.migration.strategies import FindPaths


@hookimpl
def virtiofsd_make_migration(config: Any) -> FindPaths:
    return FindPaths(config)
