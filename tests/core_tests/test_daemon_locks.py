"""Locks as a guest sees them: GETLK, SETLK, SETLKW and flock, against ours and the Rust daemon.

The Rust daemon negotiates neither POSIX_LOCKS nor FLOCK_LOCKS and answers every lock request
ENOSYS (the guest then keeps its locks to itself, invisible to the host and to other guests).
Ours holds them on the host as open-file-description locks: the tests check conflicts between
two guest lock owners, what a host process sees, blocking waits that leave the only request
thread free, release on close, and FUSE_INTERRUPT.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, InitFlag, Opcode
from virtiofsd.testing import FuseClient, FuseReplyError
from virtiofsd.testing.fuse_client import OFFSET_MAX

RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
OWNER_A, OWNER_B = 0xA0A0, 0xB0B0
PID_A, PID_B = 4242, 4343


def fuse_error(call, *args, **kwargs) -> int:
    with pytest.raises(FuseReplyError) as failure:
        call(*args, **kwargs)
    return failure.value.errno


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "file").write_bytes(bytes(4096))
    return directory


@pytest.fixture
def locking_daemon(start_daemon, daemon_kind: str):
    """``start_daemon`` with host locks on for ours (``-o posix_lock,flock``; off by default, as
    in the Rust daemon, which refuses the option)."""

    def start(share: Path, *extra: str, **options: object):
        locks = ("-o", "posix_lock,flock") if daemon_kind == "ours" else ()
        return start_daemon(share, *locks, *extra, **options)

    return start


def open_twice(fuse: FuseClient) -> tuple[int, int, int]:
    """``file`` opened read-write twice, as by two guest processes: (nodeid, fh_a, fh_b)."""
    nodeid = fuse.lookup(ROOT_ID, "file").nodeid
    return nodeid, fuse.open(nodeid, os.O_RDWR).fh, fuse.open(nodeid, os.O_RDWR).fh


def host_conflicts(path: Path, lock_type: int, start: int, length: int) -> bool:
    """Whether a host process's own OFD lock of that range would conflict."""
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack("hhqqi4x", lock_type, os.SEEK_SET, start, length, 0)
        found = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))
        return found[0] != UN
    finally:
        os.close(fd)


def test_lock_requests(locking_daemon, daemon_kind: str, share: Path) -> None:
    """Two owners: conflicts, GETLK naming the holder, splitting, host visibility, unlock."""
    with locking_daemon(share) as session:
        fuse = session.client
        nodeid, fh_a, fh_b = open_twice(fuse)
        negotiated = fuse.init_out.flags & (InitFlag.POSIX_LOCKS | InitFlag.FLOCK_LOCKS)
        if daemon_kind == "rust":
            assert not negotiated, "the Rust daemon leaves locks to the guest"
            assert fuse_error(fuse.setlk, nodeid, fh_a, OWNER_A, 0, 99, WR, PID_A) == errno.ENOSYS
            assert fuse_error(fuse.getlk, nodeid, fh_b, OWNER_B) == errno.ENOSYS
            return
        assert negotiated == InitFlag.POSIX_LOCKS | InitFlag.FLOCK_LOCKS
        fuse.setlk(nodeid, fh_a, OWNER_A, 0, 99, WR, PID_A)
        assert fuse_error(fuse.setlk, nodeid, fh_b, OWNER_B, 50, 60, RD, PID_B) == errno.EAGAIN
        assert fuse.getlk(nodeid, fh_b, OWNER_B, 50, 60, RD, PID_B) == (0, 99, WR, PID_A)
        assert fuse.getlk(nodeid, fh_a, OWNER_A, 0, 99, WR, PID_A).lock_type == UN, \
            "an owner's own locks never conflict with it"
        # The same owner through another handle: still its lock (POSIX locks are per process).
        assert fuse.getlk(nodeid, fh_b, OWNER_A, 0, 99, WR, PID_A).lock_type == UN
        fuse.setlk(nodeid, fh_b, OWNER_B, 100, OFFSET_MAX, RD, PID_B)
        assert host_conflicts(share / "file", WR, 10, 1), "the host sees the guest's lock"
        assert host_conflicts(share / "file", WR, 5000, 1)
        assert not host_conflicts(share / "file", RD, 5000, 1), "read locks share"
        # Unlocking the middle splits A's lock in two.
        fuse.setlk(nodeid, fh_a, OWNER_A, 40, 59, UN)
        fuse.setlk(nodeid, fh_b, OWNER_B, 40, 59, WR, PID_B)
        assert fuse.getlk(nodeid, fh_b, OWNER_B, 0, 99, WR).start in (0, 60)
        assert fuse_error(fuse.setlk, nodeid, fh_b, OWNER_B, 60, 60, WR) == errno.EAGAIN
        assert fuse_error(fuse.setlk, nodeid, fh_a, OWNER_A, 10, 5, WR) == errno.EINVAL
        assert fuse_error(fuse.setlk, nodeid, fh_a, OWNER_A, 0, 1, 7) == errno.EINVAL
        assert fuse_error(fuse.setlk, nodeid, 999, OWNER_A, 0, 1, WR) == errno.EBADF


def test_close_and_release_drop_the_locks(locking_daemon, daemon_kind: str, share: Path) -> None:
    """FLUSH (every close) drops the owner's POSIX locks; RELEASE with FLOCK_UNLOCK the flock."""
    if daemon_kind == "rust":
        pytest.skip("the Rust daemon serves no locks (ENOSYS, checked in test_lock_requests)")
    with locking_daemon(share) as session:
        fuse = session.client
        nodeid, fh_a, fh_b = open_twice(fuse)
        fuse.setlk(nodeid, fh_a, OWNER_A, 0, OFFSET_MAX, WR, PID_A)
        fuse.flush(nodeid, fh_a, OWNER_B)
        assert host_conflicts(share / "file", RD, 0, 0), "another owner's close changes nothing"
        fuse.flush(nodeid, fh_a, OWNER_A)
        assert not host_conflicts(share / "file", RD, 0, 0)
        fuse.setlk(nodeid, fh_b, OWNER_B, 0, OFFSET_MAX, WR, PID_B)
        fuse.flush(nodeid, fh_b, OWNER_B)

        fuse.setlk(nodeid, fh_a, OWNER_A, 0, OFFSET_MAX, WR, PID_A, flock=True)
        assert fuse_error(fuse.setlk, nodeid, fh_b, OWNER_B, 0, OFFSET_MAX, RD, PID_B,
                          flock=True) == errno.EAGAIN
        host = os.open(share / "file", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(host, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fuse.release(nodeid, fh_a, os.O_RDWR, abi.RELEASE_FLOCK_UNLOCK, OWNER_A)
            fcntl.flock(host, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(host)
        fuse.setlk(nodeid, fh_b, OWNER_B, 0, OFFSET_MAX, WR, PID_B, flock=True)


@pytest.mark.parametrize("pool", [0, 2])
def test_a_blocking_lock_waits_without_stalling_other_requests(
    locking_daemon, daemon_kind: str, share: Path, pool: int
) -> None:
    """SETLKW on a held lock: the only request thread keeps serving, the wait ends when the
    guest holder unlocks, when a host holder unlocks, or with EINTR on FUSE_INTERRUPT."""
    if daemon_kind == "rust":
        pytest.skip("the Rust daemon serves no locks (ENOSYS, checked in test_lock_requests)")
    with locking_daemon(share, "--thread-pool-size", str(pool)) as session:
        fuse = session.client
        nodeid, fh_a, fh_b = open_twice(fuse)
        fuse.setlk(nodeid, fh_a, OWNER_A, 0, 9, WR, PID_A)
        waiting = fuse.submit_setlkw(nodeid, fh_b, OWNER_B, 5, 5, WR, PID_B)
        time.sleep(0.2)
        assert not waiting.done
        assert fuse.getattr(nodeid).attr.size == 4096, "other requests are served meanwhile"
        assert fuse.read(nodeid, fh_a, 0, 4) == bytes(4)
        fuse.setlk(nodeid, fh_a, OWNER_A, 0, 9, UN)
        assert fuse.wait(waiting) == (0, b"")
        assert fuse.getlk(nodeid, fh_a, OWNER_A, 5, 5, RD).pid == PID_B

        host = os.open(share / "file", os.O_RDWR)
        try:
            fcntl.lockf(host, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)
            waiting = fuse.submit_setlkw(nodeid, fh_a, OWNER_A, 100, 100, RD, PID_A)
            time.sleep(0.2)
            assert not waiting.done
            fcntl.lockf(host, fcntl.LOCK_UN, 1, 100)
            started = time.monotonic()
            assert fuse.wait(waiting) == (0, b"")
            assert time.monotonic() - started < 1.0
        finally:
            os.close(host)

        waiting = fuse.submit_setlkw(nodeid, fh_a, OWNER_A, 5, 5, WR, PID_A)
        time.sleep(0.1)
        assert not waiting.done
        fuse.interrupt(waiting.unique)
        assert fuse.wait(waiting) == (errno.EINTR, b"")


def test_a_waiting_lock_does_not_keep_the_daemon_from_stopping(
    locking_daemon, daemon_kind: str, share: Path
) -> None:
    if daemon_kind == "rust":
        pytest.skip("the Rust daemon serves no locks (ENOSYS, checked in test_lock_requests)")
    with locking_daemon(share) as session:
        fuse = session.client
        nodeid, fh_a, fh_b = open_twice(fuse)
        fuse.setlk(nodeid, fh_a, OWNER_A, 0, 0, WR, PID_A, flock=True)
        fuse.submit_setlkw(nodeid, fh_b, OWNER_B, 0, 0, WR, PID_B, flock=True)
        time.sleep(0.1)
        fuse.close()
        assert session.process.wait(timeout=10) == 0


@pytest.mark.parametrize("options, posix, flock", [
    ("no_posix_lock", False, False), ("no_flock", False, False),
    ("no_posix_lock,no_flock", False, False), ("posix_lock,flock", True, True),
    ("posix_lock", True, False), ("flock", False, True),
])
def test_o_options_switch_the_lock_kinds(start_daemon, daemon_kind: str, share: Path,
                                         options: str, posix: bool, flock: bool) -> None:
    if daemon_kind == "rust":
        pytest.skip("the Rust daemon refuses -o posix_lock and -o flock")
    with start_daemon(share, "-o", options) as session:
        fuse = session.client
        assert bool(fuse.init_out.flags & InitFlag.POSIX_LOCKS) == posix
        assert bool(fuse.init_out.flags & InitFlag.FLOCK_LOCKS) == flock
        nodeid, fh_a, _fh_b = open_twice(fuse)
        if not posix:
            assert fuse_error(fuse.getlk, nodeid, fh_a, OWNER_A) == errno.ENOSYS
            assert fuse_error(fuse.setlk, nodeid, fh_a, OWNER_A) == errno.ENOSYS
        if not flock:
            assert fuse_error(fuse.setlk, nodeid, fh_a, OWNER_A, flock=True) == errno.ENOSYS


def test_a_stray_flock_unlock_at_release_still_closes_the_file(start_daemon, daemon_kind: str,
                                                                share: Path) -> None:
    """RELEASE with FLOCK_UNLOCK where flock locks are off (a guest kernel never sends it then,
    a hostile guest may): the file is closed as by any RELEASE, and the daemon, whose seccomp
    filter then answers flock(2) with EOPNOTSUPP, carries on."""
    with start_daemon(share) as session:
        fuse = session.client
        nodeid, fh_a, fh_b = open_twice(fuse)
        fuse.release(nodeid, fh_a, release_flags=abi.RELEASE_FLOCK_UNLOCK)
        assert fuse_error(fuse.read, nodeid, fh_a, 0, 1) == errno.EBADF
        assert fuse.read(nodeid, fh_b, 0, 4) == bytes(4)


def test_lock_requests_without_the_flag_in_init(locking_daemon, daemon_kind: str,
                                                share: Path) -> None:
    """A guest that did not offer POSIX_LOCKS keeps its locks: a stray request is ENOSYS."""
    with locking_daemon(share, init=False) as session:
        fuse = session.client
        fuse.init(InitFlag.ASYNC_READ | InitFlag.BIG_WRITES)
        assert not fuse.init_out.flags & (InitFlag.POSIX_LOCKS | InitFlag.FLOCK_LOCKS)
        nodeid, fh_a, _fh_b = open_twice(fuse)
        assert fuse_error(fuse.getlk, nodeid, fh_a, OWNER_A) == errno.ENOSYS
        assert fuse_error(fuse.setlk, nodeid, fh_a,
                          OWNER_A) == errno.ENOSYS
        assert fuse.request(Opcode.SETLKW, nodeid, abi.LK_IN.pack(fh_a, 1, 0, 0, WR, 1, 0, 0),
                            0)[0] == errno.ENOSYS
