"""The device-state stream: what a source daemon hands to a destination daemon (sans-IO).

QEMU carries these bytes opaquely inside its migration stream (SET_DEVICE_STATE_FD).  Layout,
all integers little-endian:

    header   magic  8 bytes  b"PYVFSDST"
             version u32     (3; versions 1 and 2 are read too)
             length  u32     bytes of the body that follows
    body     session         major u32, minor u32, flags u64, max_write u32,
                             max_readahead u32, max_pages u32
             next_nodeid u64, next_fh u64      (ids the destination must never hand out again)
             inodes  u32 count, then per inode:
                 nodeid u64, refcount u64, file_type u32 (S_IFMT bits), kind u8, then by kind:
                   ROOT    nothing (the destination's own shared folder)
                   PATH    path: bytes (relative to the shared folder)
                   HANDLE  mount: bytes (mount root relative to the shared folder),
                           handle_type i32, handle: bytes
                   INVALID reason: bytes (UTF-8; the source could not locate the inode)
                 has_verify u8, then if 1: handle_type i32, handle: bytes
                 (``bytes`` is a u32 length followed by that many bytes)
             handles u32 count, then per handle:
                 fh u64, nodeid u64, flags u32 (host open flags), offset u64
             (version 2 and later)
             posix_owners u32 count, then per (inode, guest lock owner):
                 nodeid u64, owner u64, pid u32 (the guest pid GETLK reports),
                 ranges u32 count, then per range: start u64, end u64 (inclusive; 2**63-1
                 runs to the end of the file), type u16 (F_RDLCK 0, F_WRLCK 1),
                 (version 3 and later) handles u32 count, then per handle: fh u64 (the
                 guest's open files the owner locked through)
             flocks u32 count, then per handle holding a flock(2) lock:
                 fh u64, nodeid u64, type u16 (F_RDLCK shared, F_WRLCK exclusive)
    trailer  crc32 u32 of the body

Version 1 (before locks were carried) is the same without the two lock sections; it loads
with no locks.  Version 2 has no handles per lock owner: its owners are released at their
FLUSH and at DESTROY only (an open-file-description lock then outlives its file).  A stream that does not start with the magic (the Rust virtiofsd's postcard stream, say), has
another version, is cut short, carries trailing bytes or fails its checksum is refused with a
:class:`StateFormatError` naming the problem; the destination then fails CHECK_DEVICE_STATE and
QEMU aborts the migration, leaving the source running.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"PYVFSDST"
VERSION = 3
#: Versions :func:`decode` reads.
READABLE_VERSIONS = (1, 2, 3)

_HEADER = struct.Struct("<8sII")
_SESSION = struct.Struct("<IIQIII")
_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_INODE = struct.Struct("<QQIB")
_HANDLE = struct.Struct("<QQIQ")
_POSIX_OWNER = struct.Struct("<QQII")
_RANGE = struct.Struct("<QQH")
_FLOCK = struct.Struct("<QQH")


class StateFormatError(ValueError):
    """The bytes are not a device state this daemon can load; the message says why."""


class LocationKind(enum.IntEnum):
    ROOT = 0
    PATH = 1
    HANDLE = 2
    INVALID = 3


@dataclass(frozen=True)
class Location:
    """How the destination finds an inode again."""

    kind: LocationKind
    path: bytes = b""
    handle_type: int = 0
    handle: bytes = b""
    reason: str = ""


@dataclass(frozen=True)
class SessionState:
    major: int
    minor: int
    flags: int
    max_write: int
    max_readahead: int
    max_pages: int


@dataclass(frozen=True)
class InodeState:
    nodeid: int
    refcount: int
    file_type: int
    location: Location
    #: A file handle of the inode, for ``--migration-verify-handles``; None without it.
    verify: tuple[int, bytes] | None = None


@dataclass(frozen=True)
class HandleState:
    fh: int
    nodeid: int
    flags: int
    offset: int


@dataclass(frozen=True)
class PosixLockState:
    """The POSIX record locks one guest lock owner holds on one inode: ``(start, end, type)``
    ranges, disjoint and merged; ``handles`` are the open files it locked through, so that the
    destination releases an open-file-description lock when its file is released."""

    nodeid: int
    owner: int
    pid: int
    ranges: tuple[tuple[int, int, int], ...]
    handles: tuple[int, ...] = ()


@dataclass(frozen=True)
class FlockState:
    """The flock(2) lock one open handle holds (F_RDLCK shared, F_WRLCK exclusive)."""

    fh: int
    nodeid: int
    lock_type: int


@dataclass
class DeviceState:
    session: SessionState
    next_nodeid: int
    next_fh: int
    inodes: list[InodeState] = field(default_factory=list)
    handles: list[HandleState] = field(default_factory=list)
    posix_locks: list[PosixLockState] = field(default_factory=list)
    flocks: list[FlockState] = field(default_factory=list)
    #: The version the stream had (a version 1 stream carries no locks).
    version: int = VERSION


def _bytes(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def encode(state: DeviceState, version: int = VERSION) -> bytes:
    """The stream for ``state``; ``version=1`` or ``2`` (for tests of old streams) leaves out
    the locks, or the lock owners' handles."""
    s = state.session
    parts = [
        _SESSION.pack(s.major, s.minor, s.flags, s.max_write, s.max_readahead, s.max_pages),
        _U64.pack(state.next_nodeid),
        _U64.pack(state.next_fh),
        _U32.pack(len(state.inodes)),
    ]
    for inode in state.inodes:
        loc = inode.location
        parts.append(_INODE.pack(inode.nodeid, inode.refcount, inode.file_type, loc.kind))
        if loc.kind is LocationKind.PATH:
            parts.append(_bytes(loc.path))
        elif loc.kind is LocationKind.HANDLE:
            parts += [_bytes(loc.path), _I32.pack(loc.handle_type), _bytes(loc.handle)]
        elif loc.kind is LocationKind.INVALID:
            parts.append(_bytes(loc.reason.encode()))
        if inode.verify is None:
            parts.append(_U8.pack(0))
        else:
            parts += [_U8.pack(1), _I32.pack(inode.verify[0]), _bytes(inode.verify[1])]
    parts.append(_U32.pack(len(state.handles)))
    for handle in state.handles:
        parts.append(_HANDLE.pack(handle.fh, handle.nodeid, handle.flags, handle.offset))
    if version >= 2:
        parts.append(_U32.pack(len(state.posix_locks)))
        for owner in state.posix_locks:
            parts.append(_POSIX_OWNER.pack(owner.nodeid, owner.owner, owner.pid,
                                           len(owner.ranges)))
            parts += [_RANGE.pack(start, end, kind) for start, end, kind in owner.ranges]
            if version >= 3:
                parts.append(_U32.pack(len(owner.handles)))
                parts += [_U64.pack(fh) for fh in owner.handles]
        parts.append(_U32.pack(len(state.flocks)))
        for flock in state.flocks:
            parts.append(_FLOCK.pack(flock.fh, flock.nodeid, flock.lock_type))
    body = b"".join(parts)
    return _HEADER.pack(MAGIC, version, len(body)) + body + _U32.pack(zlib.crc32(body))


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self._data = data
        self.pos = 0

    def take(self, layout: struct.Struct, what: str) -> tuple:
        end = self.pos + layout.size
        if end > len(self._data):
            raise StateFormatError(f"device state truncated in {what} at byte {self.pos}")
        values = layout.unpack_from(self._data, self.pos)
        self.pos = end
        return values

    def blob(self, what: str) -> bytes:
        (length,) = self.take(_U32, what)
        end = self.pos + length
        if end > len(self._data):
            raise StateFormatError(f"device state truncated in {what} at byte {self.pos}")
        data = bytes(self._data[self.pos:end])
        self.pos = end
        return data


def decode(data: bytes) -> DeviceState:
    """Parse a stream made by :func:`encode`.

    :raises StateFormatError: a foreign, newer, truncated, padded or corrupted stream.
    """
    if len(data) < _HEADER.size:
        if MAGIC.startswith(bytes(data[:8])) and data:
            raise StateFormatError(f"device state truncated in the header ({len(data)} bytes)")
        raise StateFormatError(f"not a pyvirtiofsd device state: {len(data)} bytes, no header")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateFormatError(
            f"not a pyvirtiofsd device state (starts with {bytes(magic)!r}, expected {MAGIC!r}); "
            "a stream from another virtiofsd implementation cannot be loaded")
    if version not in READABLE_VERSIONS:
        raise StateFormatError(f"device state version {version} is not supported (this daemon "
                               f"reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    total = _HEADER.size + length + _U32.size
    if len(data) < total:
        raise StateFormatError(f"device state truncated: {len(data)} of {total} bytes")
    if len(data) > total:
        raise StateFormatError(f"device state has {len(data) - total} bytes after its end")
    body = memoryview(data)[_HEADER.size:_HEADER.size + length]
    (crc,) = _U32.unpack_from(data, _HEADER.size + length)
    if zlib.crc32(body) != crc:
        raise StateFormatError("device state checksum mismatch (corrupted in transit)")
    reader = _Reader(body)
    session = SessionState(*reader.take(_SESSION, "the session"))
    (next_nodeid,) = reader.take(_U64, "the node id counter")
    (next_fh,) = reader.take(_U64, "the handle counter")
    state = DeviceState(session, next_nodeid, next_fh, version=version)
    (count,) = reader.take(_U32, "the inode count")
    for _ in range(count):
        nodeid, refcount, file_type, kind_value = reader.take(_INODE, "an inode")
        try:
            kind = LocationKind(kind_value)
        except ValueError:
            raise StateFormatError(f"inode {nodeid}: unknown location kind {kind_value}") from None
        if kind is LocationKind.PATH:
            location = Location(kind, path=reader.blob("a path"))
        elif kind is LocationKind.HANDLE:
            mount = reader.blob("a mount path")
            (handle_type,) = reader.take(_I32, "a handle type")
            location = Location(kind, path=mount, handle_type=handle_type,
                                handle=reader.blob("a file handle"))
        elif kind is LocationKind.INVALID:
            location = Location(kind, reason=reader.blob("a reason").decode(errors="replace"))
        else:
            location = Location(kind)
        (has_verify,) = reader.take(_U8, "the verify flag")
        verify = None
        if has_verify:
            (verify_type,) = reader.take(_I32, "a verify handle type")
            verify = (verify_type, reader.blob("a verify handle"))
        state.inodes.append(InodeState(nodeid, refcount, file_type, location, verify))
    (count,) = reader.take(_U32, "the handle count")
    for _ in range(count):
        state.handles.append(HandleState(*reader.take(_HANDLE, "an open handle")))
    if version >= 2:
        (count,) = reader.take(_U32, "the POSIX lock owner count")
        for _ in range(count):
            nodeid, owner, pid, ranges = reader.take(_POSIX_OWNER, "a POSIX lock owner")
            held = tuple(reader.take(_RANGE, "a POSIX lock range") for _ in range(ranges))
            handles: tuple[int, ...] = ()
            if version >= 3:
                (handle_count,) = reader.take(_U32, "a lock owner's handle count")
                handles = tuple(reader.take(_U64, "a lock owner's handle")[0]
                                for _ in range(handle_count))
            state.posix_locks.append(PosixLockState(nodeid, owner, pid, held, handles))
        (count,) = reader.take(_U32, "the flock count")
        for _ in range(count):
            state.flocks.append(FlockState(*reader.take(_FLOCK, "a flock")))
    if reader.pos != len(body):
        raise StateFormatError(f"device state body has {len(body) - reader.pos} unread bytes")
    return state
