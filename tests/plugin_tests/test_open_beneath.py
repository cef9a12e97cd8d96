"""LOOKUP's resolution primitive: one component, confined to its folder by openat2 where the
kernel has it (RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS), plain openat otherwise.

Names reaching it are validated single components already (names.py); these tests hand it
what validation would refuse, to show that the second line of defence holds on its own.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from virtiofsd.sys import ffi
from virtiofsd_plugins.passthrough import state
from virtiofsd_plugins.passthrough.state import open_beneath

needs_openat2 = pytest.mark.skipif(not ffi.openat2_available, reason="kernel without openat2")


@pytest.fixture
def folder(tmp_path: Path):
    share = tmp_path / "share"
    share.mkdir()
    (tmp_path / "outside").write_text("outside")
    (share / "file").write_text("inside")
    os.symlink("/", share / "to-root")
    os.symlink("..", share / "up")
    fd = os.open(share, os.O_PATH | os.O_DIRECTORY)
    yield share, fd
    os.close(fd)


def _target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_a_plain_name_is_opened_without_following_it(folder) -> None:
    share, fd = folder
    assert _target(open_beneath(fd, b"file")) == str(share / "file")
    assert _target(open_beneath(fd, b"to-root")) == str(share / "to-root")


@needs_openat2
@pytest.mark.parametrize("path", [b"../outside", b"up/outside", b"to-root/etc/passwd",
                                  b"/etc/passwd"])
def test_paths_that_climb_stay_inside(folder, path: bytes) -> None:
    share, fd = folder
    with pytest.raises(OSError) as failure:
        _target(open_beneath(fd, path))
    assert failure.value.errno == errno.ENOENT


@needs_openat2
def test_magic_links_are_refused(folder) -> None:
    share, fd = folder
    proc_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as failure:
            open_beneath(proc_fd, f"{fd}/file".encode())
        assert failure.value.errno in (errno.ELOOP, errno.EXDEV)
    finally:
        os.close(proc_fd)


def test_without_openat2_it_falls_back_to_openat(folder, monkeypatch) -> None:
    share, fd = folder
    monkeypatch.setattr(ffi, "openat2_available", False)
    assert _target(open_beneath(fd, b"file")) == str(share / "file")
    assert state.ffi.openat2_available is False
