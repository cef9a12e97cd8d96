"""Guest address translation: boundaries, spanning, overflow, overlap, front-end addresses."""

from __future__ import annotations

import mmap
import os

import pytest
from virtiofsd.errors import GuestProtocolError
from virtiofsd.virtio.memory import (
    GuestMemory,
    GuestMemoryError,
    MappedRegion,
    map_region,
)


def region(gpa: int, size: int, uaddr: int | None = None, fill: int = 0) -> MappedRegion:
    buf = bytearray([fill]) * size
    return MappedRegion(gpa, size, uaddr if uaddr is not None else 0x7F00_0000_0000 + gpa,
                        memoryview(buf))


def test_translate_returns_a_writable_view_of_the_right_bytes():
    backing = bytearray(range(256)) * 16
    mem = GuestMemory([MappedRegion(0x1000, len(backing), 0x5000, memoryview(backing))])
    view = mem.translate(0x1010, 4)
    assert bytes(view) == bytes([0x10, 0x11, 0x12, 0x13])
    view[0] = 0xAA
    assert backing[0x10] == 0xAA


def test_translate_accepts_the_exact_end_and_rejects_one_past():
    mem = GuestMemory([region(0x1000, 0x1000)])
    assert len(mem.translate(0x1000, 0x1000)) == 0x1000
    assert len(mem.translate(0x1FFF, 1)) == 1
    with pytest.raises(GuestMemoryError):
        mem.translate(0x1FFF, 2)
    with pytest.raises(GuestMemoryError):
        mem.translate(0x2000, 1)
    with pytest.raises(GuestMemoryError):
        mem.translate(0xFFF, 1)


def test_errors_are_guest_protocol_errors():
    mem = GuestMemory([region(0x1000, 0x1000)])
    with pytest.raises(GuestProtocolError, match="not backed"):
        mem.translate(0, 8)


def test_huge_lengths_and_addresses_do_not_wrap():
    mem = GuestMemory([region(0x1000, 0x1000)])
    for gpa, length in [(0x1000, 1 << 64), (0x1008, (1 << 64) - 8), ((1 << 64) - 1, 2), (0x1000, -1)]:
        with pytest.raises(GuestMemoryError):
            mem.translate(gpa, length)
        with pytest.raises(GuestMemoryError):
            mem.slices(gpa, length)


def test_region_past_the_64_bit_space_is_rejected():
    with pytest.raises(GuestMemoryError, match="overflows"):
        region((1 << 64) - 0x800, 0x1000)


def test_region_view_must_match_its_size():
    with pytest.raises(GuestMemoryError):
        MappedRegion(0, 0x1000, 0, memoryview(bytearray(0x800)))


def test_overlapping_regions_are_rejected():
    with pytest.raises(GuestMemoryError, match="overlaps"):
        GuestMemory([region(0x1000, 0x2000), region(0x2FFF, 0x1000)])
    GuestMemory([region(0x1000, 0x2000), region(0x3000, 0x1000)])


def test_slices_span_adjacent_regions_but_not_holes():
    first = region(0x1000, 0x1000, fill=1)
    second = region(0x2000, 0x1000, fill=2)
    far = region(0x4000, 0x1000, fill=3)
    mem = GuestMemory([far, second, first])
    views = mem.slices(0x1FFE, 4)
    assert [bytes(v) for v in views] == [b"\x01\x01", b"\x02\x02"]
    with pytest.raises(GuestMemoryError):
        mem.translate(0x1FFE, 4)
    with pytest.raises(GuestMemoryError):
        mem.slices(0x2FFE, 4)
    assert [bytes(v) for v in mem.slices(0x4000, 2)] == [b"\x03\x03"]


def test_extend_views_leaves_the_list_alone_on_error():
    mem = GuestMemory([region(0x1000, 0x1000), region(0x2000, 0x1000)])
    out: list[memoryview] = []
    with pytest.raises(GuestMemoryError):
        mem.extend_views(out, 0x2F00, 0x200)
    assert out == []


def test_front_end_addresses_translate_to_guest_physical():
    mem = GuestMemory([region(0x1000, 0x1000, uaddr=0x7000_0000),
                       region(0x100000, 0x1000, uaddr=0x9000_0000)])
    assert mem.vva_to_gpa(0x7000_0010) == 0x1010
    assert mem.vva_to_gpa(0x9000_0FFF) == 0x100FFF
    with pytest.raises(GuestMemoryError):
        mem.vva_to_gpa(0x9000_1000)
    with pytest.raises(GuestMemoryError):
        mem.vva_to_gpa(0x1010)


def test_adding_and_removing_regions_builds_new_tables():
    mem = GuestMemory([region(0x1000, 0x1000, uaddr=0x10000)])
    bigger = mem.with_region(region(0x8000, 0x1000, uaddr=0x20000))
    assert len(mem) == 1 and len(bigger) == 2
    with pytest.raises(GuestMemoryError):
        bigger.with_region(region(0x8800, 0x1000))
    smaller, removed = bigger.without_region(0x1000, 0x1000, 0x10000)
    assert removed.guest_phys_addr == 0x1000
    assert [r.guest_phys_addr for r in smaller.regions] == [0x8000]
    with pytest.raises(GuestMemoryError):
        smaller.without_region(0x1000, 0x1000, 0x10000)
    with pytest.raises(GuestMemoryError):
        smaller.without_region(0x8000, 0x1000, 0x99999)


def test_map_region_shares_memory_with_the_fd_at_an_unaligned_offset():
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 3 * mmap.PAGESIZE)
        mapped = map_region(fd, 0x10000, mmap.PAGESIZE, 0x7000_0000, mmap.PAGESIZE + 0x10)
        mem = GuestMemory([mapped])
        mem.translate(0x10000, 4)[:] = b"ping"
        assert os.pread(fd, 4, mmap.PAGESIZE + 0x10) == b"ping"
        os.pwrite(fd, b"pong", mmap.PAGESIZE + 0x20)
        assert bytes(mem.translate(0x10010, 4)) == b"pong"
    finally:
        os.close(fd)
    # The mapping outlives the fd it came from.
    assert bytes(mem.translate(0x10000, 4)) == b"ping"


def test_map_region_refuses_a_file_too_short_for_the_region():
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        with pytest.raises(GuestMemoryError, match="region needs"):
            map_region(fd, 0, 2 * mmap.PAGESIZE, 0, 0)
        with pytest.raises(GuestMemoryError):
            map_region(fd, 0, mmap.PAGESIZE, 0, 0x10)
    finally:
        os.close(fd)
