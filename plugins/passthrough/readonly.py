"""Entry point ``readonly`` (group ``virtiofsd.policy``): ``--readonly``.

Wrappers around the passthrough operations that refuse, before the file system runs, every
operation that would change the shared folder: the guest receives EROFS.  Like the Rust
daemon's read-only wrapper, the refusal does not first check what a writable file system would
have answered (mkdir of an existing name is EROFS here, not EEXIST).

OPEN and OPENDIR pass only read-only opens: write access, O_TRUNC or O_EXCL is EROFS.  ACCESS
with W_OK is EROFS, and so is TMPFILE.  Locks pass (they change no data).  Everything else (lookups, reads, folder reads, fsync, statfs) passes.
Unlike the Rust daemon, CREATE is refused outright rather than falling back to opening an
existing file: the guest sends OPEN for names it knows exist.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Generator
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError

_WRITING_OPEN_FLAGS = os.O_TRUNC | os.O_EXCL | os.O_CREAT


def _refuse() -> FuseError:
    return FuseError(errno.EROFS, "the shared directory is read-only (--readonly)")


def _check_open(flags: int) -> None:
    if flags & os.O_ACCMODE != os.O_RDONLY or flags & _WRITING_OPEN_FLAGS:
        raise _refuse()


@hookimpl(wrapper=True)
def virtiofsd_fuse_open(flags: int) -> Generator[None, Any, Any]:
    _check_open(flags)
    return (yield)


@hookimpl(wrapper=True)
def virtiofsd_fuse_opendir(flags: int) -> Generator[None, Any, Any]:
    _check_open(flags)
    return (yield)


@hookimpl(wrapper=True)
def virtiofsd_fuse_access(mask: int) -> Generator[None, Any, Any]:
    if mask & os.W_OK:
        raise _refuse()
    return (yield)


def _refusing_wrapper() -> Any:
    """A wrapper implementation that refuses its operation before the file system sees it."""

    def refuse() -> Generator[None, Any, Any]:
        raise _refuse()
        yield  # a wrapper must be a generator; this line is never reached

    return hookimpl(wrapper=True)(refuse)


virtiofsd_fuse_setattr = _refusing_wrapper()
virtiofsd_fuse_mknod = _refusing_wrapper()
virtiofsd_fuse_mkdir = _refusing_wrapper()
virtiofsd_fuse_symlink = _refusing_wrapper()
virtiofsd_fuse_link = _refusing_wrapper()
virtiofsd_fuse_unlink = _refusing_wrapper()
virtiofsd_fuse_rmdir = _refusing_wrapper()
virtiofsd_fuse_rename = _refusing_wrapper()
virtiofsd_fuse_create = _refusing_wrapper()
virtiofsd_fuse_tmpfile = _refusing_wrapper()
virtiofsd_fuse_write = _refusing_wrapper()
virtiofsd_fuse_fallocate = _refusing_wrapper()
virtiofsd_fuse_copy_file_range = _refusing_wrapper()
virtiofsd_fuse_setxattr = _refusing_wrapper()
virtiofsd_fuse_removexattr = _refusing_wrapper()
