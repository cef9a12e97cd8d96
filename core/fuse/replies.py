"""Typed FUSE replies and their encoders.

A FUSE operation hook returns one of these objects (or ``bytes`` for replies whose body is raw
data, ``b""`` for an empty success).  The router encodes the result into the device-writable part
of the descriptor chain.  Attributes come from anything with the ``st_*`` fields of an
``os.stat_result`` (an ``os.stat_result`` itself fits), so a plugin hands over what it has without
copying.  A :class:`virtiofsd.sys.ffi.Statx` (what the passthrough file system's LOOKUP gets
from ``statx``) is packed without reading a field by name: its first fields are ``fuse_attr``'s,
in wire order and units.

Encoders are module functions over precompiled structs: they run once per request on the hot path.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Any, Protocol

from virtiofsd.fuse import abi
from virtiofsd.sys.ffi import FUSE_ATTR_FIELDS, Statx

_NS = 1_000_000_000
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

#: ``fuse_entry_out`` and ``fuse_attr_out`` as packed from a :class:`Statx`: the seconds of the
#: three times are signed there (a time before 1970 goes out as the two's complement the kernel
#: reads as signed), everything else is ``abi.ENTRY_OUT`` and ``abi.ATTR_OUT``.
_ENTRY_OUT_STATX = struct.Struct("<QQQQII" + "QQQqqqIIIIIIIIII")
_ATTR_OUT_STATX = struct.Struct("<QII" + "QQQqqqIIIIIIIIII")
assert _ENTRY_OUT_STATX.size == abi.ENTRY_OUT.size and _ATTR_OUT_STATX.size == abi.ATTR_OUT.size


class StatLike(Protocol):
    """What an attribute reply needs from a stat result (``os.stat_result`` fits)."""

    st_ino: int
    st_size: int
    st_blocks: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_rdev: int
    st_blksize: int


@functools.lru_cache(maxsize=32)
def split_timeout(seconds: float) -> tuple[int, int]:
    """Seconds as a float -> (whole seconds, nanoseconds), as FUSE's ``*_valid`` fields want.

    Cached: a file system answers with one or two timeouts, and every entry and attribute reply
    splits them.
    """
    whole = int(seconds)
    return whole, int(round((seconds - whole) * _NS))


def attr_values(st: Any, attr_flags: int = 0) -> tuple[int, ...]:
    """The sixteen ``fuse_attr`` fields of a stat result, in wire order.

    Times before 1970 are negative; the kernel reads the seconds as signed, so they are sent as
    two's complement.  ``st_rdev`` is glibc's dev_t encoding, which equals the kernel's 32-bit
    ``new_encode_dev`` form for every major and minor below 4096 and 256, as the kernel expects.
    """
    atime, atime_ns = divmod(st.st_atime_ns, _NS)
    mtime, mtime_ns = divmod(st.st_mtime_ns, _NS)
    ctime, ctime_ns = divmod(st.st_ctime_ns, _NS)
    return (
        st.st_ino,
        st.st_size,
        st.st_blocks,
        atime & _U64,
        mtime & _U64,
        ctime & _U64,
        atime_ns,
        mtime_ns,
        ctime_ns,
        st.st_mode,
        st.st_nlink & _U32,
        st.st_uid,
        st.st_gid,
        st.st_rdev & _U32,
        st.st_blksize,
        attr_flags,
    )


class EntryReply:
    """``fuse_entry_out``: the answer to LOOKUP, MKDIR, MKNOD, SYMLINK, LINK (and CREATE's first half).

    ``nodeid`` 0 is a negative entry: the guest caches "no such name" for ``entry_timeout``.
    Every positive entry adds one to the inode's lookup count, which the guest later gives back
    through FORGET.
    """

    __slots__ = ("nodeid", "generation", "entry_timeout", "attr_timeout", "st", "attr_flags")

    def __init__(
        self,
        nodeid: int,
        st: Any,
        entry_timeout: float,
        attr_timeout: float,
        generation: int = 0,
        attr_flags: int = 0,
    ) -> None:
        self.nodeid = nodeid
        self.generation = generation
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.st = st
        self.attr_flags = attr_flags

    def encode(self) -> bytes:
        st = self.st
        entry_s, entry_ns = split_timeout(self.entry_timeout)
        attr_s, attr_ns = split_timeout(self.attr_timeout)
        if type(st) is Statx:
            return _ENTRY_OUT_STATX.pack(self.nodeid, self.generation, entry_s, attr_s, entry_ns,
                                         attr_ns, *st[:FUSE_ATTR_FIELDS], self.attr_flags)
        if st is None:
            return abi.ENTRY_OUT.pack(self.nodeid, self.generation, entry_s, attr_s, entry_ns,
                                      attr_ns, *([0] * 16))
        return abi.ENTRY_OUT.pack(self.nodeid, self.generation, entry_s, attr_s, entry_ns, attr_ns,
                                  *attr_values(st, self.attr_flags))


class AttrReply:
    """``fuse_attr_out``: the answer to GETATTR and SETATTR."""

    __slots__ = ("st", "timeout", "attr_flags")

    def __init__(self, st: Any, timeout: float, attr_flags: int = 0) -> None:
        self.st = st
        self.timeout = timeout
        self.attr_flags = attr_flags

    def encode(self) -> bytes:
        st = self.st
        seconds, nanos = split_timeout(self.timeout)
        if type(st) is Statx:
            return _ATTR_OUT_STATX.pack(seconds, nanos, 0, *st[:FUSE_ATTR_FIELDS], self.attr_flags)
        return abi.ATTR_OUT.pack(seconds, nanos, 0, *attr_values(st, self.attr_flags))


class OpenReply:
    """``fuse_open_out``: the answer to OPEN and OPENDIR; ``open_flags`` are ``abi.FOPEN_*``."""

    __slots__ = ("fh", "open_flags")

    def __init__(self, fh: int, open_flags: int = 0) -> None:
        self.fh = fh
        self.open_flags = open_flags

    def encode(self) -> bytes:
        return abi.OPEN_OUT.pack(self.fh, self.open_flags, 0)


class CreateReply:
    """``fuse_entry_out`` followed by ``fuse_open_out``: the answer to CREATE."""

    __slots__ = ("entry", "open")

    def __init__(self, entry: EntryReply, open: OpenReply) -> None:  # noqa: A002 - FUSE's name
        self.entry = entry
        self.open = open

    def encode(self) -> bytes:
        return self.entry.encode() + self.open.encode()


class WriteReply:
    """``fuse_write_out``: bytes written (WRITE, COPY_FILE_RANGE)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self) -> bytes:
        return abi.WRITE_OUT.pack(self.size, 0)


class StatfsReply:
    """``fuse_statfs_out`` from an ``os.statvfs_result``."""

    __slots__ = ("st",)

    def __init__(self, st: os.statvfs_result) -> None:
        self.st = st

    def encode(self) -> bytes:
        st = self.st
        return abi.KSTATFS.pack(st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
                                st.f_bsize, st.f_namemax, st.f_frsize, 0)


class LseekReply:
    """``fuse_lseek_out``: the resulting file offset."""

    __slots__ = ("offset",)

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def encode(self) -> bytes:
        return abi.LSEEK_OUT.pack(self.offset)


class XattrSizeReply:
    """``fuse_getxattr_out``: the size a GETXATTR or LISTXATTR with size 0 asks for."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self) -> bytes:
        return abi.GETXATTR_OUT.pack(self.size, 0)


class LockReply:
    """``fuse_lk_out``: a conflicting lock (byte range inclusive, type, holder's guest pid), or
    type ``F_UNLCK`` when nothing conflicts."""

    __slots__ = ("start", "end", "lock_type", "pid")

    def __init__(self, start: int, end: int, lock_type: int, pid: int) -> None:
        self.start = start
        self.end = end
        self.lock_type = lock_type
        self.pid = pid

    def encode(self) -> bytes:
        return abi.LK_OUT.pack(self.start, self.end, self.lock_type, self.pid)


#: The body of a successful reply that carries no data (UNLINK, RELEASE, FSYNC, ...).
EMPTY = b""
