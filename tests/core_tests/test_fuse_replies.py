"""Attribute replies: what the guest receives for an inode, whichever stat object a plugin
hands over (a ``Statx``, an ``os.stat_result``, or any object with the ``st_*`` fields)."""

from __future__ import annotations

import os
import types

import pytest

from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import AttrReply, EntryReply
from virtiofsd.sys import ffi

_STAT_FIELDS = ("st_ino", "st_size", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_blksize")


@pytest.fixture(params=["file", "folder", "/dev/null"])
def inode_fd(request, tmp_path):
    """An O_PATH descriptor of a file with times before 1970, a folder, or a device node."""
    (tmp_path / "file").write_bytes(b"12345")
    os.utime(tmp_path / "file", ns=(-1_500_000_001, -7_000_000_001))
    (tmp_path / "folder").mkdir()
    fd = os.open(tmp_path / request.param, os.O_PATH)
    yield fd
    os.close(fd)


def _views(fd):
    """The same inode as each kind of stat object."""
    st = os.stat(fd)
    plain = types.SimpleNamespace(**{name: getattr(st, name) for name in _STAT_FIELDS})
    return ffi.statx(fd, b"", ffi.AT_EMPTY_PATH), st, plain


def test_every_kind_of_stat_object_gives_the_same_entry(inode_fd):
    encoded = {EntryReply(7, st, 1.5, 0.25, 3, abi.ATTR_SUBMOUNT).encode()
               for st in _views(inode_fd)}
    assert len(encoded) == 1
    fields = abi.ENTRY_OUT.unpack(encoded.pop())
    assert fields[:7] == (7, 3, 1, 0, 500_000_000, 250_000_000, os.stat(inode_fd).st_ino)
    assert fields[-1] == abi.ATTR_SUBMOUNT


def test_every_kind_of_stat_object_gives_the_same_attributes(inode_fd):
    encoded = {AttrReply(st, 2.0).encode() for st in _views(inode_fd)}
    assert len(encoded) == 1
    fields = abi.ATTR_OUT.unpack(encoded.pop())
    st = os.stat(inode_fd)
    assert fields[3] == st.st_ino and fields[12] == st.st_mode and fields[-1] == 0


def test_times_before_1970_reach_the_guest_as_negative_seconds(tmp_path):
    (tmp_path / "file").touch()
    os.utime(tmp_path / "file", ns=(-1_500_000_001, -7_000_000_001))
    fd = os.open(tmp_path / "file", os.O_PATH)
    try:
        for st in _views(fd):
            reply = AttrReply(st, 1.0).encode()
            seconds = [int.from_bytes(reply[start:start + 8], "little", signed=True)
                       for start in (40, 48)]
            nanoseconds = [int.from_bytes(reply[start:start + 4], "little")
                           for start in (64, 68)]
            assert (seconds, nanoseconds) == ([-2, -8], [499_999_999, 999_999_999]), st
    finally:
        os.close(fd)
