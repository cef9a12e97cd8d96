"""The common misconfigurations get one clear, actionable log line, never a traceback.

Guest memory that is not shared (QEMU without ``share=on``) is tested with the other refused
vhost-user requests in ``test_daemon_robustness.py`` (``unmappable-region``,
``ring-before-memory``): the refusal names the QEMU and libvirt settings to use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseReplyError, running_daemon

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only folder needs root")


@pytest.fixture
def ours(command_of):
    return lambda *extra: command_of("ours", *extra)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    return directory


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder nobody can create anything in, root included: a read-only tmpfs."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@needs_root
def test_socket_folder_not_writable_is_a_clear_error(ours, share, tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "read-only") as folder:
        socket_path = folder / "vhost.sock"
        command = [arg.replace("{socket_path}", str(socket_path)).replace("{shared_dir}",
                                                                          str(share))
                   for arg in ours()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert (f"--socket-path {socket_path}: cannot create the socket and its lock file"
            in result.stderr), result.stderr
    assert "Read-only file system" in result.stderr
    assert "needs a folder it can write" in result.stderr


def test_low_fd_limit_is_reported_at_start_and_when_it_runs_out(ours, share) -> None:
    """A hard limit of 64: a warning at start, then, when the guest has looked up more files
    than that, EMFILE replies and a log line that says what to raise."""
    for index in range(100):
        (share / f"f{index}").touch()
    command = ["prlimit", "--nofile=64:64", "--", *ours()]
    with running_daemon(command, share) as session:
        fuse = session.client
        failures = 0
        for index in range(100):
            try:
                fuse.lookup(ROOT_ID, f"f{index}")
            except FuseReplyError as err:
                assert err.errno == errno.EMFILE
                failures += 1
        assert failures > 0
        assert fuse.getattr(ROOT_ID).attr.ino == os.stat(share).st_ino
        log = session.log_text()
    assert "only 64 file descriptors may be open" in log, log
    assert "raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit)" in log
    assert "the daemon is out of file descriptors; raise --rlimit-nofile" in log, log
    assert "Traceback" not in log, log

