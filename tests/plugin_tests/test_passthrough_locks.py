"""The passthrough lock operations, called through their hooks as the router calls them."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from virtiofsd.deferred import Deferred
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EMPTY
from virtiofsd_plugins.passthrough.locks import OFFSET_MAX, apply_range

RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
END = (1 << 63) - 1
LOCKS = abi.InitFlag.POSIX_LOCKS | abi.InitFlag.FLOCK_LOCKS


@pytest.fixture
def locking(make_fs, shared: Path):
    (shared / "file").write_bytes(bytes(100))
    fs = make_fs(session_flags=LOCKS)
    nodeid = fs.lookup(b"file").nodeid
    return fs, nodeid


def setlk(fs, nodeid: int, fh: int, owner: int, start: int, end: int, lock_type: int,
          pid: int = 0, sleep: bool = False, flock: bool = False) -> Any:
    return fs.hook.virtiofsd_fuse_setlk(req=fs.req(), nodeid=nodeid, fh=fh, owner=owner,
                                        start=start, end=end, lock_type=lock_type, pid=pid,
                                        lk_flags=abi.LK_FLOCK if flock else 0, sleep=sleep)


def getlk(fs, nodeid: int, fh: int, owner: int, start: int = 0, end: int = END,
          lock_type: int = WR) -> tuple[int, int, int, int]:
    reply = fs.hook.virtiofsd_fuse_getlk(req=fs.req(), nodeid=nodeid, fh=fh, owner=owner,
                                         start=start, end=end, lock_type=lock_type, pid=0,
                                         lk_flags=0)
    return reply.start, reply.end, reply.lock_type, reply.pid


def outcome(deferred: Deferred, timeout: float = 5.0) -> Any:
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    deferred.add_callback(results.append)
    while not results and time.monotonic() < deadline:
        time.sleep(0.005)
    assert results, "the wait did not end"
    return results[0]


def test_getlk_names_the_pid_of_the_owner_holding_the_conflict(locking):
    fs, nodeid = locking
    fh = fs.open(nodeid, os.O_RDWR).fh
    assert setlk(fs, nodeid, fh, 1, 0, 9, RD, pid=11) == EMPTY
    assert setlk(fs, nodeid, fh, 2, 20, 29, WR, pid=22) == EMPTY
    assert setlk(fs, nodeid, fh, 3, 5, 5, RD, pid=33) == EMPTY
    assert getlk(fs, nodeid, fh, 4, 20, 20) == (20, 29, WR, 22)
    assert getlk(fs, nodeid, fh, 4, 0, 2) == (0, 9, RD, 11)
    assert getlk(fs, nodeid, fh, 4, 0, END, RD) == (20, 29, WR, 22)
    assert getlk(fs, nodeid, fh, 4, 30, END) == (0, 0, UN, 0)
    assert getlk(fs, nodeid, fh, 1, 0, 9, WR)[2] == RD, "another owner's read lock at 5"


def test_a_wait_ends_when_the_holder_unlocks_or_closes(locking):
    fs, nodeid = locking
    fh = fs.open(nodeid, os.O_RDWR).fh
    setlk(fs, nodeid, fh, 1, 0, END, WR)
    waiting = setlk(fs, nodeid, fh, 2, 50, 50, RD, sleep=True)
    assert isinstance(waiting, Deferred)
    time.sleep(0.05)
    assert not waiting.done
    fs.hook.virtiofsd_fuse_flush(req=fs.req(), nodeid=nodeid, fh=fh, lock_owner=1)
    assert outcome(waiting) == EMPTY
    assert getlk(fs, nodeid, fh, 3, 50, 50)[2] == RD


def flock_wait(fs, nodeid: int) -> tuple[int, Deferred]:
    """A second handle waiting for flock LOCK_EX while a first one holds it: (fh, its wait)."""
    fh_a = fs.open(nodeid, os.O_RDWR).fh
    fh_b = fs.open(nodeid, os.O_RDWR).fh
    setlk(fs, nodeid, fh_a, 1, 0, END, WR, flock=True)
    return fh_b, setlk(fs, nodeid, fh_b, 2, 0, END, WR, sleep=True, flock=True)


def assert_eintr(deferred: Deferred) -> None:
    result = outcome(deferred)
    assert isinstance(result, FuseError) and result.errno == errno.EINTR


def test_cancel_and_destroy_answer_eintr(locking):
    fs, nodeid = locking
    fh_b, cancelled = flock_wait(fs, nodeid)
    cancelled.cancel()
    assert_eintr(cancelled)
    destroyed = setlk(fs, nodeid, fh_b, 2, 0, END, RD, sleep=True, flock=True)
    fs.hook.virtiofsd_fuse_destroy(req=fs.req())
    assert_eintr(destroyed)


def test_release_ends_the_waits_of_its_handle(locking):
    fs, nodeid = locking
    fh_b, waiting = flock_wait(fs, nodeid)
    fs.hook.virtiofsd_fuse_release(req=fs.req(), nodeid=nodeid, fh=fh_b, flags=os.O_RDWR,
                                   release_flags=abi.RELEASE_FLOCK_UNLOCK, lock_owner=2)
    assert_eintr(waiting)
    with pytest.raises(FuseError) as failure:
        setlk(fs, nodeid, fh_b, 2, 0, END, WR, flock=True)
    assert failure.value.errno == errno.EBADF


def test_owners_open_a_file_the_daemon_may_only_read(locking, shared: Path):
    """A read-only host file still takes read locks (the owner's open falls back to O_RDONLY);
    a write lock on it is EBADF, as from the host kernel."""
    fs, _nodeid = locking
    (shared / "readonly").write_bytes(b"x")
    os.chmod(shared / "readonly", 0o444)
    nodeid = fs.lookup(b"readonly").nodeid
    fh = fs.open(nodeid, os.O_RDONLY).fh
    if os.geteuid() == 0:
        pytest.skip("root opens the read-only file read-write anyway")
    assert setlk(fs, nodeid, fh, 1, 0, END, RD) == EMPTY
    with pytest.raises(OSError) as failure:
        setlk(fs, nodeid, fh, 1, 0, END, WR)
    assert failure.value.errno == errno.EBADF


def test_locks_not_negotiated_are_enosys(make_fs, shared: Path):
    (shared / "file").write_bytes(b"")
    fs = make_fs(session_flags=0)
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_RDWR).fh
    for flock in (False, True):
        with pytest.raises(FuseError) as failure:
            setlk(fs, nodeid, fh, 1, 0, END, WR, flock=flock)
        assert failure.value.errno == errno.ENOSYS


def test_tmpfile_through_the_hook(make_fs, shared: Path):
    fs = make_fs()
    reply = fs.hook.virtiofsd_fuse_tmpfile(req=fs.req(uid=1000, gid=1000), parent=1, name=b"/",
                                           mode=0o600, flags=os.O_RDWR | os.O_TMPFILE, umask=0,
                                           open_flags=0)
    nodeid = reply.entry.nodeid
    assert fs.write(nodeid, reply.open.fh, b"temp") == 4
    assert fs.read(nodeid, reply.open.fh, 10) == b"temp"
    assert os.listdir(shared) == []
    st = os.stat(fs.inodes.get(nodeid).fd)
    assert (st.st_uid, st.st_gid, st.st_nlink) == (1000, 1000, 0)


def test_a_wait_that_closes_a_cycle_is_edeadlk(locking, shared: Path):
    """Owner 1 waits for owner 2, who would wait for owner 1 (through another file, too)."""
    fs, nodeid = locking
    (shared / "second").write_bytes(bytes(10))
    second = fs.lookup(b"second").nodeid
    fh = fs.open(nodeid, os.O_RDWR).fh
    fh2 = fs.open(second, os.O_RDWR).fh
    assert setlk(fs, nodeid, fh, 1, 0, 0, WR) == EMPTY
    assert setlk(fs, second, fh2, 2, 0, 0, WR) == EMPTY
    waiting = setlk(fs, second, fh2, 1, 0, 0, WR, sleep=True)
    assert isinstance(waiting, Deferred)
    with pytest.raises(FuseError) as failure:
        setlk(fs, nodeid, fh, 2, 0, 0, WR, sleep=True)
    assert failure.value.errno == errno.EDEADLK
    third = setlk(fs, nodeid, fh, 3, 0, 0, RD, sleep=True)
    assert isinstance(third, Deferred), "a waiter outside the cycle just waits"
    fs.hook.virtiofsd_fuse_flush(req=fs.req(), nodeid=second, fh=fh2, lock_owner=2)
    assert outcome(waiting) == EMPTY
    third.cancel()
    assert_eintr(third)


@pytest.mark.parametrize("held, change, expected", [
    ([], (0, 9, 1), [(0, 9, 1)]),
    ([(0, 9, 1)], (10, 19, 1), [(0, 19, 1)]),
    ([(0, 9, 1)], (10, 19, 0), [(0, 9, 1), (10, 19, 0)]),
    ([(0, 99, 1)], (40, 59, 0), [(0, 39, 1), (40, 59, 0), (60, 99, 1)]),
    ([(0, 99, 1)], (40, 59, 2), [(0, 39, 1), (60, 99, 1)]),
    ([(0, 9, 0), (20, 29, 0)], (5, 24, 0), [(0, 29, 0)]),
    ([(0, 9, 1)], (0, OFFSET_MAX, 2), []),
    ([(100, OFFSET_MAX, 0)], (0, 99, 0), [(0, OFFSET_MAX, 0)]),
])
def test_the_recorded_ranges_merge_and_split_as_posix_locks_do(held, change, expected):
    """What a migration hands over is what the owner holds: types 0 read, 1 write, 2 unlock."""
    assert apply_range(held, *change) == expected


def release(fs, nodeid: int, fh: int) -> None:
    fs.hook.virtiofsd_fuse_release(req=fs.req(), nodeid=nodeid, fh=fh, flags=os.O_RDWR,
                                   release_flags=0, lock_owner=0)


def host_sees_lock(path: Path, start: int = 0) -> int:
    """The type of the lock a host program meets at ``start`` (F_UNLCK: none)."""
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack("hhqqi4x", WR, os.SEEK_SET, start, 1, 0)
        return struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))[0]
    finally:
        os.close(fd)


def test_an_open_file_description_lock_goes_with_the_last_close(locking, shared: Path):
    """F_OFD_SETLK in the guest: the owner is the open file itself, so no FLUSH ever names it
    and Linux sends no unlock at the last close; RELEASE must let its lock go."""
    fs, nodeid = locking
    fh = fs.open(nodeid, os.O_RDWR).fh
    assert setlk(fs, nodeid, fh, 0xFFFF8880_1234_0000, 0, 9, WR) == EMPTY
    assert host_sees_lock(shared / "file") == WR
    release(fs, nodeid, fh)
    assert host_sees_lock(shared / "file") == UN


def test_a_process_lock_taken_through_two_open_files_outlives_the_release_of_one(locking,
                                                                                   shared: Path):
    """A classic F_SETLK owner (the process) may lock through several open files; only its
    close(2) (FLUSH) drops its locks, not the release of one file it no longer uses."""
    fs, nodeid = locking
    first, second = fs.open(nodeid, os.O_RDWR).fh, fs.open(nodeid, os.O_RDWR).fh
    assert setlk(fs, nodeid, first, 7, 0, 9, WR) == EMPTY
    assert setlk(fs, nodeid, second, 7, 20, 29, WR) == EMPTY
    release(fs, nodeid, first)
    assert host_sees_lock(shared / "file", 5) == WR
    fs.hook.virtiofsd_fuse_flush(req=fs.req(), nodeid=nodeid, fh=second, lock_owner=7)
    assert host_sees_lock(shared / "file", 5) == UN
