"""The dirty bitmap: which bits a write into guest memory sets."""

from __future__ import annotations

from virtiofsd.virtio.dirty_log import DirtyLog
from virtiofsd.virtio.memory import GuestMemory, MappedRegion


def bits(bitmap: bytearray) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1}


def test_mark_sets_one_bit_per_touched_page():
    bitmap = bytearray(16)
    log = DirtyLog(memoryview(bitmap))
    log.mark(0x1000, 1)
    log.mark(0x5FFF, 2)  # straddles pages 5 and 6
    log.mark(0x9000, 0)  # nothing written, nothing marked
    assert bits(bitmap) == {1, 5, 6}


def test_a_range_beyond_the_log_is_not_marked_and_does_not_fail(caplog):
    bitmap = bytearray(1)
    DirtyLog(memoryview(bitmap)).mark(0x100000, 8)
    assert bits(bitmap) == set()
    assert "outside" in caplog.text


def test_views_are_marked_at_their_guest_physical_addresses():
    backing = bytearray(0x10000)
    memory = GuestMemory([MappedRegion(0x200000, 0x10000, 0x7F0000000000, memoryview(backing))])
    bitmap = bytearray(0x400000 // 4096 // 8)
    log = DirtyLog(memoryview(bitmap))
    views = memory.slices(0x203000, 0x100) + memory.slices(0x208000, 0x2000)
    # 0x100 bytes in the first view, 0x1001 in the second: pages 0x208 and 0x209 (one byte).
    log.mark_views(memory, views, 0x100 + 0x1001)
    assert bits(bitmap) == {0x203, 0x208, 0x209}
