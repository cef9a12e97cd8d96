"""FUSE_INIT negotiation: which protocol version and optional features a mount runs with.

The rules follow the Rust virtiofsd (the drop-in we replace):

- we speak 7.38 and accept guests from 7.27 up; an older guest, or any major below 7, is
  refused with EPROTO;
- a guest with a major above 7 receives our version only and is expected to send a second INIT
  with major 7 (the kernel's way of downgrading);
- a feature is switched on only when the guest offered it *and* this daemon supports it under
  the current configuration (:data:`FEATURE_RULES`).  Features that belong to later work
  (ACLs, security labels, NFS export, supplementary groups, idmap) have rows
  with :func:`not_yet`, so enabling one is a one-line change next to its reason;
- ``flags2`` (bits 32..63) is read only when the guest set INIT_EXT, and INIT_EXT is echoed in
  the reply whenever the guest offered it, so the kernel reads our ``flags2``.

:func:`negotiate` is pure: it builds a :class:`FuseSession` and the ``fuse_init_out`` bytes; the
router installs the session and sends the bytes.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from virtiofsd.config import CacheMode
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi

F = abi.InitFlag

#: ``fuse_init_out`` values the Rust daemon sends.
MAX_BACKGROUND = 65535
CONGESTION_THRESHOLD = 49149
TIME_GRAN_NS = 1
MAP_ALIGNMENT = 0

_LOW_32 = (1 << 32) - 1


def always(config: Any) -> bool:
    """Enabled whenever the guest offers it."""
    return True


def not_yet(config: Any) -> bool:
    """Not supported by this daemon yet: never enabled, whatever the guest offers."""
    return False


def _readdirplus(config: Any) -> bool:
    return config.readdirplus and config.cache is not CacheMode.NEVER


#: ``(flag, predicate(config), why)``: a flag is enabled when the guest offered it and the
#: predicate holds.  Flags without a row are never enabled.
FEATURE_RULES: tuple[tuple[F, Callable[[Any], bool], str], ...] = (
    (F.ASYNC_READ, always, "several READs of one file may be in flight"),
    (F.ATOMIC_O_TRUNC, always, "OPEN handles O_TRUNC itself"),
    (F.BIG_WRITES, always, "WRITEs larger than one page"),
    (F.AUTO_INVAL_DATA, always, "the guest drops cached data when mtime/size change"),
    (F.DO_READDIRPLUS, _readdirplus, "--no-readdirplus and --cache=never turn it off"),
    (F.READDIRPLUS_AUTO, _readdirplus, "the guest picks READDIR or READDIRPLUS"),
    (F.ASYNC_DIO, always, "direct I/O requests may be in flight together"),
    (F.PARALLEL_DIROPS, always, "lookups and readdirs of one folder in parallel"),
    (F.MAX_PAGES, always, "max_pages in the reply is honoured (1 MiB requests)"),
    (F.WRITEBACK_CACHE, lambda config: config.writeback, "--writeback"),
    (F.SUBMOUNTS, lambda config: config.announce_submounts, "--announce-submounts"),
    (F.HAS_IOCTL_DIR, always, "echoed as the Rust daemon does (IOCTL itself is ENOSYS)"),
    (F.INIT_EXT, always, "flags2 is valid in both directions"),
    (F.DIRECT_IO_ALLOW_MMAP, lambda config: config.allow_mmap, "--allow-mmap"),
    (F.POSIX_LOCKS, lambda config: config.posix_lock, "-o no_posix_lock leaves them to the guest"),
    (F.FLOCK_LOCKS, lambda config: config.flock, "-o no_flock leaves flock() to the guest"),
    (F.EXPORT_SUPPORT, not_yet, "LOOKUP of '.' and '..' for NFS export"),
    (F.POSIX_ACL, not_yet, "--posix-acl (needs DONT_MASK and SETXATTR_EXT with it)"),
    (F.DONT_MASK, not_yet, "only with POSIX ACLs"),
    (F.SETXATTR_EXT, not_yet, "only with POSIX ACLs"),
    (F.SECURITY_CTX, not_yet, "--security-label"),
    (F.HANDLE_KILLPRIV_V2, lambda config: config.killpriv_v2, "--killpriv-v2"),
    (F.CREATE_SUPP_GROUP, not_yet, "creation with the caller's supplementary group"),
    (F.ALLOW_IDMAP, not_yet, "idmapped mounts in the guest"),
)


class FuseSession:
    """The state one INIT negotiated; a fresh, uninitialized one exists before the first INIT.

    ``flags`` holds the enabled ``abi.InitFlag`` bits, ``flags2`` shifted into bits 32 and up.
    A session is replaced, never mutated, when the guest re-initializes, so a request that
    captured it keeps a consistent view.
    """

    __slots__ = ("major", "minor", "flags", "max_write", "max_readahead", "max_pages",
                 "initialized")

    def __init__(self, major: int = 0, minor: int = 0, flags: int = 0, max_write: int = 0,
                 max_readahead: int = 0, max_pages: int = 0, initialized: bool = False) -> None:
        self.major = major
        self.minor = minor
        self.flags = flags
        self.max_write = max_write
        self.max_readahead = max_readahead
        self.max_pages = max_pages
        self.initialized = initialized

    def has(self, flag: int) -> bool:
        """Whether every bit of ``flag`` was negotiated."""
        return self.flags & flag == flag

    def __repr__(self) -> str:
        return (f"FuseSession({self.major}.{self.minor}, flags={F(self.flags)!r}, "
                f"max_write={self.max_write}, initialized={self.initialized})")


def enabled_flags(offered: int, config: Any) -> int:
    """The subset of ``offered`` (64-bit) that :data:`FEATURE_RULES` allows under ``config``."""
    enabled = 0
    for flag, predicate, _why in FEATURE_RULES:
        if offered & flag and predicate(config):
            enabled |= flag
    return enabled


def negotiate(major: int, minor: int, max_readahead: int, flags: int, flags2: int,
              config: Any) -> tuple[FuseSession, bytes]:
    """Answer the guest's ``fuse_init_in``.

    :param flags2: the guest's ``flags2``; ignored unless ``flags`` has INIT_EXT.
    :returns: the session to install and the ``fuse_init_out`` body of the reply.  For a major
        above ours the session is uninitialized and the body carries our version only.
    :raises FuseError: EPROTO for a protocol older than 7.27.
    """
    if major < abi.KERNEL_VERSION or (major == abi.KERNEL_VERSION
                                      and minor < abi.MIN_SUPPORTED_MINOR):
        raise FuseError(errno.EPROTO, f"guest FUSE protocol {major}.{minor} is older than "
                        f"{abi.KERNEL_VERSION}.{abi.MIN_SUPPORTED_MINOR}")
    if major > abi.KERNEL_VERSION:
        body = abi.INIT_OUT.pack(abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION,
                                 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return FuseSession(), body
    offered = flags & _LOW_32
    if offered & F.INIT_EXT:
        offered |= (flags2 & _LOW_32) << 32
    enabled = enabled_flags(offered, config)
    session = FuseSession(
        major=abi.KERNEL_VERSION,
        minor=min(minor, abi.KERNEL_MINOR_VERSION),
        flags=enabled,
        max_write=abi.MAX_WRITE,
        max_readahead=max_readahead,
        max_pages=abi.MAX_PAGES,
        initialized=True,
    )
    body = abi.INIT_OUT.pack(
        abi.KERNEL_VERSION,
        abi.KERNEL_MINOR_VERSION,
        max_readahead,
        enabled & _LOW_32,
        MAX_BACKGROUND,
        CONGESTION_THRESHOLD,
        abi.MAX_WRITE,
        TIME_GRAN_NS,
        abi.MAX_PAGES,
        MAP_ALIGNMENT,
        enabled >> 32,
    )
    return session, body
