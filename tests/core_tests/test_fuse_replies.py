"""Attribute replies: what the guest receives for an inode, whichever stat object a plugin
hands over."""

from __future__ import annotations

import os

import pytest

from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import AttrReply, EntryReply
from virtiofsd.sys import ffi


@pytest.fixture(params=["file", "folder", "/dev/null"])
def inode_fd(request, tmp_path):
    """An O_PATH descriptor of a file with a time before 1970, a folder, or a device node."""
    (tmp_path / "file").write_bytes(b"12345")
    os.utime(tmp_path / "file", ns=(-1_500_000_001, 7_000_000_001))
    (tmp_path / "folder").mkdir()
    fd = os.open(tmp_path / request.param, os.O_PATH)
    yield fd
    os.close(fd)


def test_entry_of_a_statx_is_the_entry_of_the_stat_of_the_same_inode(inode_fd):
    from_statx = EntryReply(7, ffi.statx(inode_fd, b"", ffi.AT_EMPTY_PATH), 1.5, 0.25, 3,
                            abi.ATTR_SUBMOUNT).encode()
    from_stat = EntryReply(7, os.stat(inode_fd), 1.5, 0.25, 3, abi.ATTR_SUBMOUNT).encode()
    assert from_statx == from_stat
    assert abi.ENTRY_OUT.unpack(from_statx)[:7] == (7, 3, 1, 0, 500_000_000, 250_000_000,
                                                    os.stat(inode_fd).st_ino)


def test_attributes_of_a_statx_are_those_of_the_stat_of_the_same_inode(inode_fd):
    from_statx = AttrReply(ffi.statx(inode_fd, b"", ffi.AT_EMPTY_PATH), 2.0).encode()
    assert from_statx == AttrReply(os.stat(inode_fd), 2.0).encode()
    fields = abi.ATTR_OUT.unpack(from_statx)
    assert fields[3] == os.stat(inode_fd).st_ino and fields[-1] == 0


def test_a_time_before_1970_reaches_the_guest_as_negative_seconds(tmp_path):
    (tmp_path / "file").touch()
    os.utime(tmp_path / "file", ns=(-1_500_000_001, 0))
    fd = os.open(tmp_path / "file", os.O_PATH)
    try:
        reply = AttrReply(ffi.statx(fd, b"", ffi.AT_EMPTY_PATH), 1.0).encode()
    finally:
        os.close(fd)
    atime = int.from_bytes(reply[40:48], "little", signed=True)
    atime_nsec = int.from_bytes(reply[64:68], "little")
    assert (atime, atime_nsec) == (-2, 499_999_999)
