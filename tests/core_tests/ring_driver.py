"""A tiny virtio driver writing into a bytearray, for the split-ring tests (Python and
compiled queue alike)."""

from __future__ import annotations

import struct

from virtiofsd.virtio.memory import GuestMemory, MappedRegion
from virtiofsd.virtio.split_queue import SplitQueue

BASE = 0x100000
MEM_SIZE = 0x40000
DESC = BASE
AVAIL = BASE + 0x1000
USED = BASE + 0x2000
DATA = BASE + 0x10000


class Driver:
    """Just enough of a virtio driver: descriptors, the avail ring, reading the used ring."""

    #: The device-side queue :meth:`queue` builds (tests switch it to the compiled one).
    queue_class: type[SplitQueue] = SplitQueue

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.buf = bytearray(MEM_SIZE)
        self.mem = GuestMemory([MappedRegion(BASE, MEM_SIZE, 0x7F00_0000_0000, memoryview(self.buf))])
        self.avail_idx = 0
        self.next_data = DATA

    def queue(self, *, event_idx: bool = False, indirect: bool = True,
              last_avail: int = 0) -> SplitQueue:
        return self.queue_class(self.size, DESC, AVAIL, USED, self.mem, event_idx=event_idx,
                                indirect=indirect, last_avail=last_avail)

    def alloc(self, content: bytes | int) -> tuple[int, int]:
        data = bytes(content) if isinstance(content, int) else content
        addr = self.next_data
        self.buf[addr - BASE : addr - BASE + len(data)] = data
        self.next_data += (len(data) + 15) & ~15
        return addr, len(data)

    def desc(self, index: int, addr: int, length: int, flags: int = 0, next_: int = 0,
             table: int = DESC) -> None:
        struct.pack_into("<QIHH", self.buf, table - BASE + 16 * index, addr, length, flags, next_)

    def publish(self, *heads: int) -> None:
        for head in heads:
            struct.pack_into("<H", self.buf, AVAIL - BASE + 4 + 2 * (self.avail_idx % self.size), head)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.buf, AVAIL - BASE + 2, self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value
        struct.pack_into("<H", self.buf, AVAIL - BASE + 2, value)

    def used_idx(self) -> int:
        return struct.unpack_from("<H", self.buf, USED - BASE + 2)[0]

    def used_element(self, slot: int) -> tuple[int, int]:
        return struct.unpack_from("<II", self.buf, USED - BASE + 4 + 8 * slot)

    def set_used_event(self, value: int) -> None:
        struct.pack_into("<H", self.buf, AVAIL - BASE + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return struct.unpack_from("<H", self.buf, USED - BASE + 4 + 8 * self.size)[0]

    def used_flags(self) -> int:
        return struct.unpack_from("<H", self.buf, USED - BASE)[0]

    def set_avail_flags(self, value: int) -> None:
        struct.pack_into("<H", self.buf, AVAIL - BASE, value)
