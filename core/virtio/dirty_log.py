"""Dirty-page logging for live migration (VHOST_F_LOG_ALL with a SET_LOG_BASE bitmap).

While QEMU migrates a running guest it re-sends every page that changed since it last sent
it.  It cannot see what the daemon writes into guest memory, so the daemon marks those pages
in a shared bitmap: bit ``n`` (byte ``n // 8``, bit ``n % 8``) stands for the 4 KiB page at
guest-physical address ``n * 4096``.  What we write there: the used ring (element, index,
``avail_event``) and the device-writable buffers of each completed chain (FUSE replies, READ
data).  QEMU only ever clears bits (atomically, word by word); we only set them.  A
read-modify-write of a byte that races with QEMU's clear can set again a bit QEMU just took,
which re-sends a page once more and is harmless; our own writers are serialised by a lock, so
none of our bits is lost.

The chain walker hands out ``memoryview`` slices of the mapped regions, not addresses, so a
view's guest-physical address is found from its host address: the region whose mapping
contains it, plus the offset.  Nothing here runs unless logging is on: the queue worker tests
one attribute per completion.
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import mmap
import threading
from collections.abc import Sequence

from virtiofsd.virtio.memory import GuestMemory

__all__ = ["LOG_PAGE_SIZE", "DirtyLog"]

log = logging.getLogger(__name__)

LOG_PAGE_SIZE = 4096
_PAGE_SHIFT = 12


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class DirtyLog:
    """The front-end's dirty bitmap, mapped from the SET_LOG_BASE fd."""

    def __init__(self, bitmap: memoryview, keep_alive: object = None) -> None:
        self._bitmap = bitmap
        self._size = bitmap.nbytes
        self._keep_alive = keep_alive
        self._lock = threading.Lock()
        #: (memory table, host start of each region, (host start, host end, gpa) of each),
        #: replaced in one assignment: pool threads may mark concurrently.
        self._index: tuple[GuestMemory | None, list[int], list[tuple[int, int, int]]] = (
            None, [], [])
        self._warned = False

    @classmethod
    def map(cls, fd: int, size: int, offset: int) -> DirtyLog:
        """Map ``size`` bytes at ``offset`` of ``fd`` (the caller keeps and closes ``fd``)."""
        mapping = mmap.mmap(fd, size + offset, flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return cls(memoryview(mapping)[offset:offset + size], mapping)

    def mark(self, gpa: int, length: int) -> None:
        """Mark the pages of ``[gpa, gpa + length)`` dirty."""
        if length <= 0:
            return
        first = gpa >> _PAGE_SHIFT
        last = (gpa + length - 1) >> _PAGE_SHIFT
        bitmap = self._bitmap
        with self._lock:
            for page in range(first, last + 1):
                byte = page >> 3
                if byte >= self._size:
                    self._outside(gpa, length)
                    return
                bitmap[byte] |= 1 << (page & 7)

    def mark_views(self, memory: GuestMemory, views: Sequence[memoryview], length: int) -> None:
        """Mark the first ``length`` bytes of ``views`` (slices of ``memory``'s regions)."""
        indexed, starts, regions = self._index
        if memory is not indexed:
            indexed, starts, regions = self._index = self._build_index(memory)
        for view in views:
            if length <= 0:
                return
            size = min(view.nbytes, length)
            length -= size
            address = _address(view)
            position = bisect.bisect_right(starts, address) - 1
            if position < 0 or address + size > regions[position][1]:
                self._outside(address, size)
                continue
            start, _end, gpa = regions[position]
            self.mark(gpa + address - start, size)

    @staticmethod
    def _build_index(memory: GuestMemory) -> tuple[GuestMemory, list[int],
                                                   list[tuple[int, int, int]]]:
        regions = sorted((_address(region.view), region.size, region.guest_phys_addr)
                         for region in memory.regions)
        return (memory, [start for start, _size, _gpa in regions],
                [(start, start + size, gpa) for start, size, gpa in regions])

    def _outside(self, where: int, length: int) -> None:
        if not self._warned:
            self._warned = True
            log.error("dirty log: %#x+%#x is outside the %d-byte log or guest memory; the page "
                      "is not marked", where, length, self._size)
