"""Start-up options seen from outside: log level, syslog, fd limit, tag, third-party plugins;
and the misconfigurations a user meets first (socket folder not writable, fd limit too low)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.plugins import install_plugin_package
from virtiofsd import log as daemon_log
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.limits import DEFAULT_CEILING, apply_rlimit_nofile, default_target
from virtiofsd.testing import DaemonStartError, FuseReplyError, running_daemon
from virtiofsd.vhost_user import messages as vu

#: The plain command a user types: no option, so every default (and its fallback) is in force.
PLAIN = [sys.executable, "-m", "virtiofsd", "--socket-path", "{socket_path}", "--shared-dir",
         "{shared_dir}"]


@pytest.fixture
def ours(command_of):
    """Our daemon's command (the suite's ``daemon_command``) with ``extra`` options."""
    return lambda *extra: command_of("ours", *extra)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "file").write_bytes(b"data")
    return directory


def open_file_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


# --- --log-level ---------------------------------------------------------------------------


def test_debug_level_traces_every_request(ours, share):
    with running_daemon(ours("--log-level", "debug"), share) as session:
        session.client.getattr(1)
        session.client.lookup(1, b"file")
        log_text = session.log_text()
    assert re.search(r"GETATTR unique=\d+ nodeid=1", log_text)
    assert re.search(r"LOOKUP unique=\d+ nodeid=1", log_text)


def test_error_level_hides_information_lines(ours, share):
    with running_daemon(ours("--log-level", "error"), share) as session:
        session.client.getattr(1)
        log_text = session.log_text()
    assert "waiting for connection" not in log_text
    assert "GETATTR" not in log_text


def test_every_default_is_enforced_so_none_is_reported_as_falling_back(share):
    with running_daemon(PLAIN, share) as session:
        log_text = session.log_text()
    assert [line for line in log_text.splitlines() if "not enforced yet" in line] == []


# --- --syslog ------------------------------------------------------------------------------


def test_syslog_sends_records_to_the_syslog_socket(tmp_path, monkeypatch):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "log"
    receiver.bind(str(path))
    receiver.settimeout(5)
    monkeypatch.setattr(daemon_log, "SYSLOG_SOCKET", str(path))
    root = logging.getLogger()
    previous_level = root.level
    try:
        daemon_log.setup_logging("info", use_syslog=True)
        logging.getLogger("virtiofsd.test").info("hello syslog")
        record = receiver.recv(4096).decode()
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_virtiofsd", False)]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)
        receiver.close()
    assert re.fullmatch(r"<30>virtiofsd\[\d+\]: INFO virtiofsd\.test: hello syslog\x00?", record)


# --- --rlimit-nofile -----------------------------------------------------------------------


def test_explicit_fd_limit_is_applied(ours, share):
    with running_daemon(ours("--rlimit-nofile", "4096"), share) as session:
        assert open_file_limit(session.process.pid) == (4096, 4096)


def test_default_fd_limit_is_the_rust_default_or_the_hard_limit_with_a_warning(ours, share):
    with running_daemon(ours(), share) as session:
        soft, hard = open_file_limit(session.process.pid)
        log_text = session.log_text()
    target = default_target()
    if soft == target:
        assert hard == target
    else:
        assert "the hard limit" in log_text and str(target) in log_text
        assert soft == hard


def test_zero_leaves_the_fd_limit_alone():
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert apply_rlimit_nofile(0) == before[0]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


def test_default_target_is_capped_at_a_million(tmp_path):
    nr_open = tmp_path / "nr_open"
    nr_open.write_text("1048576\n")
    assert default_target(str(nr_open)) == DEFAULT_CEILING
    nr_open.write_text("65536\n")
    assert default_target(str(nr_open)) == 65536


# --- --tag ---------------------------------------------------------------------------------


def test_tag_is_advertised_in_the_config_space(ours, share):
    with running_daemon(ours("--tag", "myfs"), share) as session:
        frontend = session.client.frontend
        assert frontend.offered_protocol_features & vu.ProtocolFeature.CONFIG
        reply = vu.decode_config(frontend.query(vu.FrontendRequest.GET_CONFIG,
                                                vu.encode_config(0, bytes(40))))
    assert reply.data == b"myfs".ljust(36, b"\0") + struct.pack("<I", 1)


def test_without_a_tag_there_is_no_config_space(ours, share):
    with running_daemon(ours(), share) as session:
        assert not session.client.frontend.offered_protocol_features & vu.ProtocolFeature.CONFIG


# --- --plugin: a third-party package ------------------------------------------------------

THIRD_PARTY_PLUGIN = textwrap.dedent('''
    """A third-party policy: every file system reports 42 free blocks."""
    import os

    from virtiofsd import hookimpl
    from virtiofsd.fuse.replies import StatfsReply


    class _Statvfs:
        f_blocks = 100
        f_bfree = f_bavail = 42
        f_files = f_ffree = 7
        f_bsize = f_frsize = 4096
        f_namemax = 255


    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_statfs(req, nodeid):
        return StatfsReply(_Statvfs())
''')


@pytest.fixture
def third_party_package(tmp_path: Path, monkeypatch) -> Path:
    """An installed-looking distribution with an entry point in the group virtiofsd.plugins."""
    return install_plugin_package(tmp_path / "site", "free_blocks_plugin", THIRD_PARTY_PLUGIN,
                                  {"free-blocks": "free_blocks_plugin"}, monkeypatch)


def test_a_third_party_plugin_runs_only_when_named(ours, share, third_party_package):
    with running_daemon(ours("--plugin", "free-blocks"), share) as session:
        assert session.client.statfs(1).bfree == 42
    with running_daemon(ours(), share) as session:
        assert session.client.statfs(1).bfree == os.statvfs(share).f_bfree


def test_an_unknown_plugin_is_refused_before_the_daemon_listens(ours, share):
    with pytest.raises(DaemonStartError, match="no plugin named 'missing'"):
        with running_daemon(ours("--plugin", "missing"), share):
            pass


# --- misconfigurations: one actionable line, never a traceback ------------------------------
# (Guest memory that is not shared is tested with the refused vhost-user requests in
# test_daemon_robustness.py: unmappable-region, ring-before-memory.)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only folder needs root")


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
    """A hard limit of 128 with descriptor-backed inodes: a warning at start, then, when the
    guest has looked up more files than its budget (the limit less a headroom for the daemon's
    own descriptors), ENFILE replies and one log line that says what to raise; the daemon goes
    on serving."""
    for index in range(100):
        (share / f"f{index}").touch()
    command = ["prlimit", "--nofile=128:128", "--", *ours(), "--inode-file-handles=never"]
    with running_daemon(command, share) as session:
        fuse = session.client
        failures = 0
        for index in range(100):
            try:
                fuse.lookup(ROOT_ID, f"f{index}")
            except FuseReplyError as err:
                assert err.errno == errno.ENFILE
                failures += 1
        assert failures > 0
        assert fuse.getattr(ROOT_ID).attr.ino == os.stat(share).st_ino
        log = session.log_text()
    assert "only 128 file descriptors may be open" in log, log
    assert "raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit)" in log
    assert log.count("raise --rlimit-nofile, or use --inode-file-handles=prefer") == 1, log
    assert "Traceback" not in log, log

