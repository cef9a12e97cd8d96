"""Packing of READDIR and READDIRPLUS replies into the size the guest asked for.

The guest gives a buffer size; entries are appended until the next one would not fit, and the
caller learns that through ``add`` returning False, so it can stop reading the host directory;
``fits_plus`` lets READDIRPLUS know before it looks an entry up, so that it makes no lookup for
an entry it will not send.

Listing a folder packs every entry, so each record is one ``pack_into`` into one buffer per
reply: a struct per name length, compiled the first time that length is seen, writes the
header, the name and the zero padding up to 8 bytes in one call.  A passthrough file system
hands over what ``getdents64`` wrote (:meth:`DirentBuffer.add_host_records`), which the compiled
converter (``core/native/dirents.c``) turns into records without a Python step per entry.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EntryReply
from virtiofsd.native import ffi, lib
from virtiofsd.sys.dirents64 import parse_dirents64

_ZERO_ENTRY = bytes(abi.ENTRY_OUT.size)
_INITIAL_SIZE = 16 * 1024
_pack_dirents = lib.vfs_pack_dirents if lib is not None else None


class _RecordLayouts(dict[int, tuple[int, Callable[..., None]]]):
    """Name length -> (record size, ``pack_into`` of the record's struct): the little-endian
    ``head`` fields, then the name, NUL-padded to the 8-byte boundary."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self._head = head
        self._head_size = struct.calcsize(f"<{head}")

    def __missing__(self, namelen: int) -> tuple[int, Callable[..., None]]:
        padded = ((self._head_size + namelen + 7) & ~7) - self._head_size
        layout = struct.Struct(f"<{self._head}{padded}s")
        self[namelen] = layout.size, layout.pack_into
        return layout.size, layout.pack_into


_DIRENT_HEAD = abi.DIRENT.format.lstrip("<")
#: ``fuse_dirent``: ino, off, namelen, type, name.
_DIRENT = _RecordLayouts(_DIRENT_HEAD)
#: ``fuse_direntplus``: the encoded ``fuse_entry_out``, then a ``fuse_dirent``.
_DIRENTPLUS = _RecordLayouts(f"{abi.ENTRY_OUT.size}s{_DIRENT_HEAD}")


class DirentBuffer:
    """Accumulates ``fuse_dirent`` or ``fuse_direntplus`` records up to ``capacity`` bytes.

    The records are packed into one buffer that starts at no more than ``_INITIAL_SIZE`` and
    doubles when a record needs it: the guest's size is untrusted (up to 1 MiB), and listing a
    small folder should not cost zeroing that much.
    """

    __slots__ = ("capacity", "_buffer", "_used")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buffer = bytearray(min(capacity, _INITIAL_SIZE))
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def add(self, ino: int, offset: int, dtype: int, name: bytes) -> bool:
        """Append a READDIR record; False (nothing appended) when it does not fit."""
        return self.add_all(((ino, offset, dtype, name),))

    def add_all(self, entries: Iterable[tuple[int, int, int, bytes]]) -> bool:
        """Append a READDIR record for each ``(ino, offset, dtype, name)`` in order, up to the
        first that does not fit.  The entries after that one are never asked for, so an
        iterator that parses host records as they are asked for parses no further.

        :returns: False when an entry did not fit (the reply is full), True when all did.
        """
        buffer = self._buffer
        allocated = len(buffer)
        used = self._used
        layouts = _DIRENT
        for ino, offset, dtype, name in entries:
            namelen = len(name)
            size, pack_into = layouts[namelen]
            end = used + size
            if end > allocated:
                if not self._make_room(end):
                    self._used = used
                    return False
                allocated = len(buffer)
            pack_into(buffer, used, ino, offset, namelen, dtype, name)
            used = end
        self._used = used
        return True

    def add_host_records(self, records: bytes | bytearray | memoryview) -> bool:
        """Append a READDIR record for each ``linux_dirent64`` record in ``records`` (what
        ``getdents64`` wrote), as ``add_all(parse_dirents64(records))`` does, in one compiled
        loop when it is built.

        :returns: False when a record did not fit (the reply is full), True when all did.
        :raises ValueError: a record has an impossible length (the READDIR fails).
        """
        if _pack_dirents is None:
            return self.add_all(parse_dirents64(records))
        counts = ffi.new("uint64_t[3]")  # consumed, produced, needed
        start = 0
        with ffi.from_buffer(records) as source:
            while True:
                with ffi.from_buffer(self._buffer) as target:  # released before a resize
                    status = _pack_dirents(source + start, len(records) - start,
                                           target + self._used, len(self._buffer) - self._used,
                                           counts, counts + 1, counts + 2)
                self._used += counts[1]
                start += counts[0]
                if status == lib.VFS_DIRENTS_DONE:
                    return True
                if status == lib.VFS_DIRENTS_BAD:
                    raise ValueError(f"linux_dirent64 at byte {start} of {len(records)} has an "
                                     "impossible length")
                if not self._make_room(self._used + counts[2]):
                    return False

    def _make_room(self, end: int) -> bool:
        """Grow the buffer to hold ``end`` bytes; False when that is more than ``capacity``."""
        if end > self.capacity:
            return False
        allocated = len(self._buffer)
        self._buffer.extend(bytes(min(self.capacity, max(end, 2 * allocated)) - allocated))
        return True

    def fits_plus(self, name: bytes) -> bool:
        """Whether a READDIRPLUS record for ``name`` still fits (check before looking it up)."""
        return self._used + abi.direntplus_size(len(name)) <= self.capacity

    def add_plus(self, entry: EntryReply | None, ino: int, offset: int, dtype: int,
                 name: bytes) -> bool:
        """Append a READDIRPLUS record; ``entry`` None sends a zeroed entry (nodeid 0, as for
        ``.`` and ``..``, which the guest must not count as lookups).  False (nothing appended)
        when it does not fit."""
        namelen = len(name)
        size, pack_into = _DIRENTPLUS[namelen]
        end = self._used + size
        if end > len(self._buffer) and not self._make_room(end):
            return False
        pack_into(self._buffer, self._used, entry.encode() if entry is not None else _ZERO_ENTRY,
                  ino, offset, namelen, dtype, name)
        self._used = end
        return True

    def getvalue(self) -> bytes:
        return bytes(memoryview(self._buffer)[:self._used])
