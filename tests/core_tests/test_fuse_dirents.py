"""READDIR and READDIRPLUS reply packing (virtiofsd.fuse.dirents): the records the guest parses,
and where a reply stops."""

from __future__ import annotations

import os
import random
import stat
import struct

import pytest

from virtiofsd.fuse import abi
from virtiofsd.fuse.dirents import DirentBuffer
from virtiofsd.fuse.replies import EntryReply
from virtiofsd.sys.dirents64 import parse_dirents64

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


# --- getdents64 output straight to records (the compiled converter and its Python reference) --


def host_record(ino: int, offset: int, dtype: int, name: bytes, garbage: bytes = b"") -> bytes:
    """One ``linux_dirent64`` as getdents64 writes it: the padding after the name's NUL holds
    whatever the buffer held before (``garbage``)."""
    body = struct.pack("=QqHB", ino, offset, 0, dtype) + name + b"\0" + garbage
    size = (len(body) + 7) & ~7
    body += bytes(size - len(body))
    return body[:16] + struct.pack("=H", size) + body[18:]


def random_listing(rng: random.Random, count: int) -> list[tuple[int, int, int, bytes]]:
    return [(rng.randrange(1 << 64), rng.randrange(1 << 63), rng.randrange(16),
             bytes(rng.choice(b"abcdefgh\xff\x01") for _ in range(rng.choice((1, 7, 8, 60, 255)))))
            for _ in range(count)]


@pytest.mark.parametrize("seed", range(40))
def test_host_records_pack_as_the_python_reference_does(seed):
    """Whole pages of host records, with leftovers of longer names in the padding, into replies
    of every size: the same bytes, the same stopping point, as parse_dirents64 + add_all."""
    rng = random.Random(seed)
    listing = random_listing(rng, rng.randrange(1, 60))
    records = b"".join(host_record(*entry, garbage=b"LEFTOVER"[:rng.randrange(9)])
                       for entry in listing)
    capacity = rng.choice((24, 100, 512, 4096, 65536, len(records) * 2))
    reference, compiled = DirentBuffer(capacity), DirentBuffer(capacity)
    assert compiled.add_host_records(memoryview(bytearray(records))) == \
        reference.add_all(parse_dirents64(records))
    assert compiled.getvalue() == reference.getvalue()


def test_an_impossible_host_record_is_refused():
    good = host_record(1, 2, 3, b"fine")
    bad = host_record(4, 5, 6, b"broken")
    bad = bad[:16] + struct.pack("=H", 4096) + bad[18:]
    out = DirentBuffer(4096)
    with pytest.raises(ValueError, match="impossible length"):
        out.add_host_records(good + bad)
