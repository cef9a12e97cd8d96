"""HANDLE_KILLPRIV_V2's rule as the passthrough daemon applies it (killpriv.py): which bits a
flagged write or truncation clears, and what happens when the host refuses the chmod."""

from __future__ import annotations

import errno
import stat

import prctl
import pytest
from virtiofsd_plugins.passthrough import killpriv


@pytest.mark.parametrize(("mode", "cleared"), [
    (0o6755, 0o6000),  # setuid always; setgid with group-exec
    (0o4644, 0o4000),
    (0o2666, 0),       # setgid without group-exec grants nothing and stays
    (0o2676, 0o2000),
    (0o0777, 0),
])
def test_bits_to_clear_follow_linux_rule_for_local_files(mode, cleared):
    assert killpriv.bits_to_clear(stat.S_IFREG | mode) == cleared


def test_the_chmod_clears_before_the_block_runs():
    events = []
    with killpriv.clearing_suidgid(True, lambda: stat.S_IFREG | 0o6755,
                                   lambda bits: events.append(("chmod", oct(bits)))):
        events.append(("write", None))
    assert events == [("chmod", "0o755"), ("write", None)]


def test_unflagged_or_plain_files_are_not_touched():
    def refuse(bits: int) -> None:
        raise AssertionError("no chmod expected")

    with killpriv.clearing_suidgid(False, lambda: stat.S_IFREG | 0o6755, refuse):
        pass
    with killpriv.clearing_suidgid(True, lambda: stat.S_IFREG | 0o2666, refuse):
        pass


@pytest.mark.skipif(not prctl.cap_effective.fsetid, reason="needs CAP_FSETID to lower")
def test_a_refused_chmod_leaves_the_clearing_to_the_host_kernel():
    """A daemon that may not chmod the file (not its owner, no CAP_FOWNER): the block runs with
    CAP_FSETID lowered, so the host kernel clears the bits as for an unprivileged writer."""
    def refuse(bits: int) -> None:
        raise PermissionError(errno.EPERM, "not the owner")

    with killpriv.clearing_suidgid(True, lambda: stat.S_IFREG | 0o4755, refuse):
        assert not prctl.cap_effective.fsetid
    assert prctl.cap_effective.fsetid


def test_other_chmod_failures_are_answered():
    def read_only(bits: int) -> None:
        raise OSError(errno.EROFS, "read-only file system")

    with pytest.raises(OSError) as failure:
        with killpriv.clearing_suidgid(True, lambda: stat.S_IFREG | 0o4755, read_only):
            raise AssertionError("the write must not run")
    assert failure.value.errno == errno.EROFS
