"""Entry point ``file-handles`` (group ``virtiofsd.migration``): migrate inodes as file handles."""

from __future__ import annotations

from typing import Any

from virtiofsd import hookimpl
from virtiofsd.sandbox.syscalls import FILE_HANDLE_CALLS
from virtiofsd_plugins.migration.strategies import FileHandles


@hookimpl
def virtiofsd_make_migration(config: Any) -> FileHandles:
    return FileHandles(config)


@hookimpl
def virtiofsd_sandbox_capabilities(config: Any) -> list[str]:
    """Opening a file handle (on the destination) needs CAP_DAC_READ_SEARCH, whatever the
    inode store: keep it."""
    return ["dac_read_search"]


@hookimpl
def virtiofsd_seccomp_syscalls(config: Any) -> frozenset[str]:
    """The source makes a file handle of each inode (name_to_handle_at); a destination started
    with this mode opens them (open_by_handle_at)."""
    return FILE_HANDLE_CALLS
