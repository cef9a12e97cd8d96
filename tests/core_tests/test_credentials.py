"""Per-thread credentials: the switch affects the calling thread only and is undone."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from virtiofsd.sys import ffi
from virtiofsd.sys.credentials import thread_credentials

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching credentials needs root")


def test_switch_and_restore():
    with thread_credentials(1000, 2000, groups=(3000, 3001)):
        assert (os.geteuid(), os.getegid()) == (1000, 2000)
        assert sorted(os.getgroups()) == [3000, 3001]
        assert os.getuid() == 0  # only the effective id moved
    assert (os.geteuid(), os.getegid()) == (0, 0)
    assert 3000 not in os.getgroups()


def test_restored_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with thread_credentials(1000, 1000):
            raise RuntimeError("boom")
    assert (os.geteuid(), os.getegid()) == (0, 0)


def test_root_target_is_not_switched():
    with thread_credentials(0, 0):
        assert (os.geteuid(), os.getegid()) == (0, 0)
    with thread_credentials(1000, 0):
        assert (os.geteuid(), os.getegid()) == (1000, 0)
    assert os.geteuid() == 0


def test_permission_checks_apply_as_the_user_with_known_groups(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with thread_credentials(1000, 1000, groups=(1000,)):
        with pytest.raises(PermissionError):
            (locked / "file").touch()
    (locked / "file").touch()


def test_without_groups_the_guest_kernels_permission_check_is_trusted(tmp_path):
    """No CREATE_SUPP_GROUP extension: CAP_DAC_OVERRIDE comes back after the uid switch, so a
    supplementary group the daemon does not have cannot cause a refusal the guest did not make;
    what is created still belongs to the caller."""
    team = tmp_path / "team"
    team.mkdir(mode=0o770)
    os.chown(team, 0, 4242)
    with thread_credentials(1000, 1000):
        (team / "file").touch()
        assert os.geteuid() == 1000
    assert os.stat(team / "file").st_uid == 1000
    assert os.geteuid() == 0


def test_other_threads_keep_their_credentials():
    switched = threading.Event()
    checked = threading.Event()
    seen = {}

    def other():
        switched.wait(5)
        seen["other"] = (os.geteuid(), os.getegid())
        checked.set()

    thread = threading.Thread(target=other)
    thread.start()
    with thread_credentials(1000, 1000):
        seen["self"] = (os.geteuid(), os.getegid())
        switched.set()
        checked.wait(5)
    thread.join()
    assert seen == {"self": (1000, 1000), "other": (0, 0)}


def test_a_refused_switch_is_an_oserror_and_changes_nothing():
    with thread_credentials(1000, 1000):
        with pytest.raises(OSError) as info:
            ffi.setresuid_thread(ffi.UNCHANGED, 2000, ffi.UNCHANGED)  # no CAP_SETUID now
        assert info.value.errno == errno.EPERM
        assert "setresuid" in str(info.value)
        assert os.geteuid() == 1000
    assert os.geteuid() == 0
