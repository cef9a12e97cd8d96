"""Entry point ``find-paths`` (group ``virtiofsd.migration``): migrate inodes by their paths."""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd_plugins.migration.strategies import FindPaths


@hookimpl
def virtiofsd_make_migration(config: Any) -> FindPaths:
    return FindPaths(config)


@hookimpl
def virtiofsd_seccomp_syscalls(config: Any) -> tuple[str, ...]:
    """With ``--migration-verify-handles`` the source attaches the file handle of each path it
    sends (name_to_handle_at)."""
    return ("name_to_handle_at",) if config.migration_verify_handles else ()
