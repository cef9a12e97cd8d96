"""Packing of READDIR and READDIRPLUS replies into the size the guest asked for.

The guest gives a buffer size; entries are appended until the next one would not fit, and the
caller learns that through ``add`` returning False, so it can stop reading the host directory
(and, for READDIRPLUS, undo the lookup it made for the entry that did not fit).
"""

from __future__ import annotations

from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EntryReply

_ZERO_ENTRY = bytes(abi.ENTRY_OUT.size)
_PADDING = bytes(8)


class DirentBuffer:
    """Accumulates ``fuse_dirent`` or ``fuse_direntplus`` records up to ``capacity`` bytes."""

    __slots__ = ("capacity", "_parts", "_used")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._parts: list[bytes] = []
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def add(self, ino: int, offset: int, dtype: int, name: bytes) -> bool:
        """Append a READDIR record; False (nothing appended) when it does not fit."""
        size = abi.dirent_size(len(name))
        if self._used + size > self.capacity:
            return False
        self._parts.append(abi.DIRENT.pack(ino, offset, len(name), dtype))
        self._parts.append(name)
        self._parts.append(_PADDING[: size - abi.DIRENT.size - len(name)])
        self._used += size
        return True

    def fits_plus(self, name: bytes) -> bool:
        """Whether a READDIRPLUS record for ``name`` still fits (check before looking it up)."""
        return self._used + abi.direntplus_size(len(name)) <= self.capacity

    def add_plus(self, entry: EntryReply | None, ino: int, offset: int, dtype: int,
                 name: bytes) -> bool:
        """Append a READDIRPLUS record; ``entry`` None sends a zeroed entry (nodeid 0, as for
        ``.`` and ``..``, which the guest must not count as lookups)."""
        size = abi.direntplus_size(len(name))
        if self._used + size > self.capacity:
            return False
        self._parts.append(entry.encode() if entry is not None else _ZERO_ENTRY)
        self._parts.append(abi.DIRENT.pack(ino, offset, len(name), dtype))
        self._parts.append(name)
        self._parts.append(_PADDING[: size - abi.ENTRY_OUT.size - abi.DIRENT.size - len(name)])
        self._used += size
        return True

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
