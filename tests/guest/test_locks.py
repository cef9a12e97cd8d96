"""Locks in a real guest: POSIX record locks and flock between guest processes, F_SETLKW that
waits while the share keeps serving, EDEADLK for a wait closing a cycle, release on close and on
exit, and locks the host holds.

One boot per daemon.  The guest's busybox has no lock tool, so a small static C program
(programs/lockprobe.c) is built on the host and put in the guest's initramfs.

The Rust daemon leaves locks to the guest kernel (it negotiates neither POSIX_LOCKS nor
FLOCK_LOCKS), so between guest processes everything holds there too, but a lock the host holds
is invisible to the guest: that is the expected difference, asserted per daemon.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import subprocess

import pytest

from . import runner

PROGRAM = pathlib.Path(__file__).parent / "programs" / "lockprobe.c"
CHECKS = ("posix_setlk", "posix_conflict_and_getlk", "posix_released_on_close",
          "posix_released_on_exit", "setlkw_leaves_the_share_serving",
          "setlkw_waits_then_gets_the_lock", "posix_deadlock_edeadlk",
          "posix_deadlock_other_side_proceeds", "flock_ex", "flock_conflict",
          "flock_released_on_close")


def build_probe(directory: pathlib.Path) -> bytes:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the guest's lock probe")
    output = directory / "lockprobe"
    built = subprocess.run([compiler, "-static", "-O2", "-o", str(output), str(PROGRAM)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a static lock probe: {built.stderr[-300:]}")
    return output.read_bytes()


def run_lock_workload(daemon_name: str, root: pathlib.Path):
    share = root / "share"
    share.mkdir()
    probe = build_probe(root)
    (share / "host-locked").write_bytes(bytes(10))
    (share / "host-flocked").write_bytes(bytes(10))
    held = os.open(share / "host-locked", os.O_RDWR)
    flocked = os.open(share / "host-flocked", os.O_RDONLY)
    try:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(flocked, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Host locks are off by default (as in the Rust daemon, which refuses the option).
        locks = ["-o", "posix_lock,flock"] if daemon_name == "ours" else []
        return runner.boot(daemon_name, share, runner.guest_script("locks.sh"), timeout=180,
                           log_dir=root / "logs", extra_files={"lockprobe": probe},
                           daemon_args=locks)
    finally:
        os.close(held)
        os.close(flocked)


@pytest.fixture
def lock_boot(daemon_name: str, boot_once, tmp_path_factory: pytest.TempPathFactory):
    return boot_once(("locks", daemon_name), lambda: run_lock_workload(
        daemon_name, tmp_path_factory.mktemp(f"locks-{daemon_name}")))


@pytest.mark.parametrize("check_name", CHECKS)
def test_guest_lock_check(lock_boot, check_name: str) -> None:
    check = lock_boot.check(check_name)
    assert check is not None, f"guest never reported {check_name}\n{lock_boot.console_tail(15)}"
    assert check.ok, f"guest check {check_name} failed: {check.detail}"


def test_the_guest_meets_the_host_locks(lock_boot, daemon_name: str) -> None:
    """Ours with ``-o posix_lock,flock`` holds guest locks on the host, so the host's locks stop
    the guest; the Rust daemon keeps them in the guest kernel, which never learns of the host's."""
    expected = "held" if daemon_name == "ours" else "free"
    assert lock_boot.values.get("host_posix_lock") == expected
    assert lock_boot.values.get("host_flock") == expected


def test_daemon_exits_zero(lock_boot) -> None:
    assert lock_boot.daemon_returncode == 0, runner.tail(lock_boot.daemon_log, 20)
