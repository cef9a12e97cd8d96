"""The opcodes a guest rarely sends: TMPFILE, IOCTL, POLL, BMAP, SETUPMAPPING, REMOVEMAPPING,
NOTIFY_REPLY, STATX; against ours and the Rust daemon.

An opcode a daemon does not serve must get a clean ENOSYS: the guest kernel then stops sending
it (IOCTL answers ENOTTY to the program, POLL falls back to "always ready", BMAP fails, TMPFILE
becomes EOPNOTSUPP).  NOTIFY_REPLY answers a notification, which neither daemon sends.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import Opcode
from virtiofsd.testing import FuseReplyError


def fuse_error(call, *args, **kwargs) -> int:
    with pytest.raises(FuseReplyError) as failure:
        call(*args, **kwargs)
    return failure.value.errno


def test_tmpfile_creates_an_unnamed_file_that_link_can_name(workdir) -> None:
    """Ours: an O_TMPFILE file owned by the caller, written through its handle, then linked
    into the folder.  The Rust daemon answers ENOSYS (the guest's open then fails EOPNOTSUPP)."""
    fuse = workdir.client
    if workdir.kind == "rust":
        assert fuse_error(fuse.tmpfile, workdir.nodeid) == errno.ENOSYS
        return
    with fuse.acting_as(1000, 1000):
        entry, handle = fuse.tmpfile(workdir.nodeid, 0o640, os.O_RDWR | os.O_TMPFILE)
    assert stat.S_ISREG(entry.attr.mode) and entry.attr.mode & 0o7777 == 0o640
    assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
    assert entry.attr.nlink == 0
    assert os.listdir(workdir.host) == [], "nothing appears in the folder"
    assert fuse.write(entry.nodeid, handle.fh, 0, b"unnamed") == 7
    linked = fuse.link(entry.nodeid, workdir.nodeid, "named")
    assert linked.nodeid == entry.nodeid and linked.attr.nlink == 1
    assert (workdir.host / "named").read_bytes() == b"unnamed"
    fuse.release(entry.nodeid, handle.fh)


def test_tmpfile_errors(workdir) -> None:
    if workdir.kind == "rust":
        pytest.skip("the Rust daemon answers every TMPFILE ENOSYS (checked above)")
    fuse = workdir.client
    assert fuse_error(fuse.tmpfile, workdir.nodeid, 0o600,
                      os.O_RDONLY | os.O_TMPFILE) == errno.EINVAL
    entry, handle = fuse.tmpfile(workdir.nodeid)
    assert fuse_error(fuse.tmpfile, entry.nodeid) == errno.ENOTDIR
    fuse.release(entry.nodeid, handle.fh)
    assert fuse_error(fuse.tmpfile, 999_999) == errno.EBADF


@pytest.mark.parametrize("opcode, body", [
    (Opcode.IOCTL, abi.IOCTL_IN.pack(1, 0, 0x5401, 0, 0, 0)),
    (Opcode.POLL, abi.POLL_IN.pack(1, 0, 0, 1)),
    (Opcode.BMAP, abi.BMAP_IN.pack(0, 4096, 0)),
    (Opcode.SETUPMAPPING, bytes(40)),
    (Opcode.REMOVEMAPPING, bytes(16)),
    (Opcode.STATX, bytes(24)),
])
def test_unserved_opcodes_get_enosys(workdir, opcode: int, body: bytes) -> None:
    fuse = workdir.client
    assert fuse.request(opcode, workdir.nodeid, body, 4096)[0] == errno.ENOSYS
    assert fuse.getattr(workdir.nodeid).attr.mode, "the daemon serves on"


def test_notify_reply_gets_no_reply_from_ours(workdir) -> None:
    """Ours completes it without writing anything (nothing waits for an answer); the Rust daemon
    sends an error reply."""
    fuse = workdir.client
    error, payload = fuse.request(Opcode.NOTIFY_REPLY, workdir.nodeid, bytes(32), 4096,
                                  allow_no_reply=True)
    if workdir.kind == "ours":
        assert (error, payload) == (0, b"")
    else:
        assert error != 0
    assert fuse.getattr(workdir.nodeid).attr.mode
