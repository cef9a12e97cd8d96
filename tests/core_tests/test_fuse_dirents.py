"""READDIR and READDIRPLUS reply packing (virtiofsd.fuse.dirents): the records the guest parses,
and where a reply stops."""

from __future__ import annotations

import os
import stat

import pytest

from virtiofsd.fuse import abi
from virtiofsd.fuse.dirents import DirentBuffer
from virtiofsd.fuse.replies import EntryReply

NAME_LENGTHS = [*range(1, 18), 100, 253, 255, 256, 1000]


def dirent(ino: int, offset: int, dtype: int, name: bytes) -> bytes:
    """One ``fuse_dirent`` as the kernel reads it: header, name, zeros up to 8 bytes."""
    record = abi.DIRENT.pack(ino, offset, len(name), dtype) + name
    return record + bytes(abi.dirent_size(len(name)) - len(record))


def direntplus(entry: bytes, ino: int, offset: int, dtype: int, name: bytes) -> bytes:
    record = entry + abi.DIRENT.pack(ino, offset, len(name), dtype) + name
    return record + bytes(abi.direntplus_size(len(name)) - len(record))


def entries(count: int, name_length: int = 10) -> list[tuple[int, int, int, bytes]]:
    return [(1000 + index, (index + 1) << 40, index % 16, b"%0*d" % (name_length, index))
            for index in range(count)]


@pytest.mark.parametrize("name_length", NAME_LENGTHS)
def test_readdir_records_are_fuse_dirents_padded_to_8_bytes(name_length):
    listing = entries(3, name_length)
    out = DirentBuffer(65536)
    assert out.add_all(listing)
    value = out.getvalue()
    assert value == b"".join(dirent(*entry) for entry in listing)
    assert len(out) == len(value) and len(value) % 8 == 0


def test_add_all_stops_at_the_first_entry_that_does_not_fit_and_reads_no_further():
    listing = entries(10)
    taken = []

    def lazily():
        for entry in listing:
            taken.append(entry)
            yield entry

    room = sum(len(dirent(*entry)) for entry in listing[:3])
    out = DirentBuffer(room + abi.dirent_size(10) - 1)
    assert not out.add_all(lazily())
    assert out.getvalue() == b"".join(dirent(*entry) for entry in listing[:3])
    assert taken == listing[:4]


def test_records_may_fill_the_capacity_exactly():
    listing = entries(3)
    out = DirentBuffer(sum(len(dirent(*entry)) for entry in listing))
    assert out.add_all(listing[:2]) and out.add(*listing[2])
    assert not out.add(*entries(1)[0]) and not out.add_all(entries(1))
    assert out.getvalue() == b"".join(dirent(*entry) for entry in listing)


def test_a_reply_far_bigger_than_the_first_allocation():
    listing = entries(40_000)
    capacity = abi.MAX_WRITE
    out = DirentBuffer(capacity)
    assert not out.add_all(listing)
    fitting = capacity // abi.dirent_size(10)
    assert out.getvalue() == b"".join(dirent(*entry) for entry in listing[:fitting])


@pytest.mark.parametrize("name_length", NAME_LENGTHS)
def test_readdirplus_records_carry_the_entry_or_zeros(name_length):
    st = os.stat("/")
    reply = EntryReply(7, st, 1.5, 2.0, generation=3)
    (ino, offset, dtype, name), (ino2, offset2, dtype2, name2) = entries(2, name_length)
    out = DirentBuffer(65536)
    assert out.add_plus(reply, ino, offset, dtype, name)
    assert out.add_plus(None, ino2, offset2, dtype2, name2)
    assert out.getvalue() == (direntplus(reply.encode(), ino, offset, dtype, name)
                              + direntplus(bytes(abi.ENTRY_OUT.size), ino2, offset2, dtype2, name2))
    assert abi.ENTRY_OUT.unpack_from(out.getvalue())[0] == 7
    assert abi.ENTRY_OUT.unpack_from(out.getvalue())[6] == st.st_ino


def test_fits_plus_says_what_add_plus_does():
    name = b"x" * 20
    record = abi.direntplus_size(len(name))
    out = DirentBuffer(2 * record + 7)
    for _ in range(2):
        assert out.fits_plus(name)
        assert out.add_plus(None, 1, 1, stat.S_IFREG >> 12, name)
    assert not out.fits_plus(name)
    assert not out.add_plus(None, 1, 1, stat.S_IFREG >> 12, name)
    assert len(out.getvalue()) == 2 * record


def test_readdirplus_records_beyond_the_first_allocation():
    name = b"n" * 200
    capacity = abi.MAX_WRITE
    out = DirentBuffer(capacity)
    count = 0
    while out.add_plus(None, 1, count, 8, name):
        count += 1
    assert count == capacity // abi.direntplus_size(len(name))
    assert out.getvalue() == b"".join(direntplus(bytes(abi.ENTRY_OUT.size), 1, index, 8, name)
                                      for index in range(count))
