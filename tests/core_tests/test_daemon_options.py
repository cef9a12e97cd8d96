"""The command-line options that change what a guest or the host sees, one daemon per case.

Every test runs against our daemon and the Rust reference (``daemon_kind``) with the same
assertions, unless it checks something only ours prints.  What the daemon does with a guest's
open flags is read where it shows: the ``flags`` line of ``/proc/<daemon>/fdinfo/<fd>`` of the
descriptor it opened.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, InitFlag, Opcode
from virtiofsd.testing import FuseReplyError, connect
from virtiofsd.testing.fuse_client import LINUX_6_1_INIT_FLAGS

MiB = 1 << 20
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "file").write_bytes(b"contents")
    (directory / "dir").mkdir()
    (directory / "dir" / "inner").write_bytes(b"inner")
    return directory


def fuse_error(call, *args, **kwargs) -> int:
    with pytest.raises(FuseReplyError) as failure:
        call(*args, **kwargs)
    return failure.value.errno


def daemon_open_flags(pid: int, path: Path) -> list[int]:
    """The ``open(2)`` flags of every descriptor of process ``pid`` open for I/O on ``path``
    (O_PATH descriptors, the daemon's inode references, are left out)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except FileNotFoundError:
            continue
        if target != str(path):
            continue
        match = re.search(r"^flags:\s+([0-7]+)$", info, re.MULTILINE)
        assert match, info
        flags = int(match.group(1), 8)
        if not flags & os.O_PATH:
            found.append(flags)
    return found


def opened_flags(session, nodeid: int, path: Path, flags: int) -> int:
    """OPEN ``nodeid`` with ``flags`` and return the flags of the daemon's new descriptor."""
    fuse = session.client
    before = daemon_open_flags(session.process.pid, path)
    handle = fuse.open(nodeid, flags)
    after = daemon_open_flags(session.process.pid, path)
    fuse.release(nodeid, handle.fh)
    assert len(after) == len(before) + 1, "OPEN opened exactly one descriptor"
    for value in before:
        after.remove(value)
    return after[0]


# -- --cache ---------------------------------------------------------------------------------------

CACHE_EXPECTATIONS = {
    # mode: (entry and attr timeout in seconds, FOPEN flags of files, FOPEN flags of folders)
    "never": (0, abi.FOPEN_DIRECT_IO, 0),
    "auto": (1, 0, 0),
    "always": (86400, abi.FOPEN_KEEP_CACHE, abi.FOPEN_KEEP_CACHE | abi.FOPEN_CACHE_DIR),
    "metadata": (86400, abi.FOPEN_DIRECT_IO, abi.FOPEN_KEEP_CACHE | abi.FOPEN_CACHE_DIR),
}


@pytest.mark.parametrize("mode", sorted(CACHE_EXPECTATIONS))
def test_cache_mode_sets_timeouts_and_open_flags(start_daemon, share: Path, mode: str) -> None:
    timeout, file_flags, dir_flags = CACHE_EXPECTATIONS[mode]
    with start_daemon(share, "--cache", mode) as session:
        fuse = session.client
        entry = fuse.lookup(ROOT_ID, "file")
        assert (entry.entry_valid, entry.entry_valid_nsec) == (timeout, 0)
        assert (entry.attr_valid, entry.attr_valid_nsec) == (timeout, 0)
        assert fuse.getattr(entry.nodeid).attr_valid == timeout
        assert fuse.mkdir(ROOT_ID, "made").entry_valid == timeout
        handle = fuse.open(entry.nodeid, os.O_RDONLY)
        assert handle.open_flags == file_flags
        fuse.release(entry.nodeid, handle.fh)
        created, created_handle = fuse.create(ROOT_ID, "new", 0o644, os.O_RDWR | os.O_CREAT)
        assert created_handle.open_flags == file_flags
        assert created.entry_valid == timeout
        fuse.release(created.nodeid, created_handle.fh)
        folder = fuse.opendir(ROOT_ID)
        assert folder.open_flags == dir_flags
        fuse.releasedir(ROOT_ID, folder.fh)


# -- open flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("writeback", [False, True])
def test_writeback_opens_write_only_files_read_write(
    start_daemon, share: Path, writeback: bool
) -> None:
    """With the write-back cache the guest reads pages around a partial write of a file it
    opened write-only, so the daemon must be able to read through that handle."""
    options = ("--writeback",) if writeback else ()
    with start_daemon(share, *options) as session:
        fuse = session.client
        assert bool(fuse.init_out.flags & InitFlag.WRITEBACK_CACHE) == writeback
        nodeid = fuse.lookup(ROOT_ID, "file").nodeid
        flags = opened_flags(session, nodeid, share / "file", os.O_WRONLY)
        assert flags & os.O_ACCMODE == (os.O_RDWR if writeback else os.O_WRONLY)
        handle = fuse.open(nodeid, os.O_WRONLY)
        if writeback:
            assert fuse.read(nodeid, handle.fh, 0, 100) == b"contents"
        else:
            assert fuse_error(fuse.read, nodeid, handle.fh, 0, 100) == errno.EBADF
        fuse.release(nodeid, handle.fh)


def test_writeback_cached_write_to_an_append_handle_lands_where_the_guest_says(
    start_daemon, share: Path
) -> None:
    """With the write-back cache the guest kernel owns O_APPEND: it computed the offset and
    marks the write WRITE_CACHE; appending it again on the host would misplace the data."""
    with start_daemon(share, "--writeback") as session:
        fuse = session.client
        nodeid = fuse.lookup(ROOT_ID, "file").nodeid
        handle = fuse.open(nodeid, os.O_WRONLY | os.O_APPEND)
        written = fuse.write(
            nodeid,
            handle.fh,
            2,
            b"XY",
            flags=os.O_WRONLY | os.O_APPEND,
            write_flags=abi.WRITE_CACHE,
        )
        assert written == 2
        fuse.release(nodeid, handle.fh)
        assert (share / "file").read_bytes() == b"coXYents"


@pytest.mark.parametrize("allow", [False, True])
def test_allow_direct_io_keeps_or_strips_o_direct(start_daemon, share: Path, allow: bool) -> None:
    options = ("--allow-direct-io",) if allow else ()
    with start_daemon(share, *options) as session:
        nodeid = session.client.lookup(ROOT_ID, "file").nodeid
        flags = opened_flags(session, nodeid, share / "file", os.O_RDWR | os.O_DIRECT)
        assert bool(flags & os.O_DIRECT) == allow
        assert flags & os.O_ACCMODE == os.O_RDWR


@needs_root
@pytest.mark.parametrize("preserve", [False, True])
def test_preserve_noatime_keeps_or_strips_o_noatime(
    start_daemon, share: Path, preserve: bool
) -> None:
    options = ("--preserve-noatime",) if preserve else ()
    with start_daemon(share, *options) as session:
        nodeid = session.client.lookup(ROOT_ID, "file").nodeid
        flags = opened_flags(session, nodeid, share / "file", os.O_RDONLY | os.O_NOATIME)
        assert bool(flags & os.O_NOATIME) == preserve


# -- --readonly ------------------------------------------------------------------------------------


def test_readonly_refuses_every_change_and_still_reads(
    start_daemon, daemon_kind: str, share: Path
) -> None:
    before = {
        path: (path.lstat(), path.read_bytes() if path.is_file() else None)
        for path in share.rglob("*")
    }
    with start_daemon(share, "--readonly") as session:
        fuse = session.client
        file_node = fuse.lookup(ROOT_ID, "file").nodeid
        dir_node = fuse.lookup(ROOT_ID, "dir").nodeid
        refusals = {
            "create": lambda: fuse.create(ROOT_ID, "new", 0o644, os.O_RDWR | os.O_CREAT),
            "mkdir": lambda: fuse.mkdir(ROOT_ID, "newdir"),
            "mknod": lambda: fuse.mknod(ROOT_ID, "fifo", stat.S_IFIFO | 0o644),
            "symlink": lambda: fuse.symlink(ROOT_ID, "link", "file"),
            "link": lambda: fuse.link(file_node, ROOT_ID, "hard"),
            "unlink": lambda: fuse.unlink(ROOT_ID, "file"),
            "rmdir": lambda: fuse.rmdir(dir_node, "inner"),
            "rename": lambda: fuse.rename(ROOT_ID, "file", ROOT_ID, "renamed"),
            "rename2": lambda: fuse.rename2(ROOT_ID, "file", ROOT_ID, "renamed", 1),
            "setattr mode": lambda: fuse.setattr(file_node, mode=stat.S_IFREG | 0o777),
            "setattr size": lambda: fuse.setattr(file_node, size=0),
            "setattr times": lambda: fuse.setattr(file_node, mtime_ns="now"),
            "setattr owner": lambda: fuse.setattr(file_node, uid=1000),
            "open write": lambda: fuse.open(file_node, os.O_WRONLY),
            "open read-write": lambda: fuse.open(file_node, os.O_RDWR),
            "open truncate": lambda: fuse.open(file_node, os.O_RDONLY | os.O_TRUNC),
            "tmpfile": lambda: fuse.tmpfile(ROOT_ID),
        }
        errors = {}
        for name, attempt in refusals.items():
            try:
                attempt()
            except FuseReplyError as err:
                errors[name] = err.errno
            else:
                errors[name] = 0
        expected = dict.fromkeys(refusals, errno.EROFS)
        if daemon_kind == "rust":
            # Rust refuses O_TRUNC without write access with EINVAL; ours answers what the host
            # kernel answers for O_TRUNC on a read-only mount (EROFS), which is what a guest
            # program expects to see from a read-only file system.
            expected["open truncate"] = errno.EINVAL
            expected["tmpfile"] = errno.ENOSYS  # Rust serves no TMPFILE at all
        assert errors == expected
        handle = fuse.open(file_node, os.O_RDONLY)
        assert fuse.read(file_node, handle.fh, 0, 100) == b"contents"
        fuse.release(file_node, handle.fh)
        assert set(fuse.listdir(dir_node)) == {b".", b"..", b"inner"}
        assert fuse.getattr(file_node).attr.size == len(b"contents")
        assert fuse.statfs().namelen > 0
    after = {
        path: (path.lstat(), path.read_bytes() if path.is_file() else None)
        for path in share.rglob("*")
    }
    assert set(after) == set(before)
    for path, (st, data) in before.items():
        assert (after[path][0].st_mode, after[path][0].st_size, after[path][0].st_uid) == (
            st.st_mode,
            st.st_size,
            st.st_uid,
        ), path
        assert after[path][0].st_mtime_ns == st.st_mtime_ns, path
        assert after[path][1] == data


# -- --no-readdirplus ------------------------------------------------------------------------------


def test_no_readdirplus_still_serves_readdir(start_daemon, daemon_kind: str, share: Path) -> None:
    with start_daemon(share, "--no-readdirplus") as session:
        fuse = session.client
        assert not fuse.init_out.flags & InitFlag.DO_READDIRPLUS
        assert set(fuse.listdir(ROOT_ID)) == {b".", b"..", b"file", b"dir"}
        handle = fuse.opendir(ROOT_ID)
        try:
            # A guest that was told "no READDIRPLUS" never sends one; if it does anyway, both
            # daemons still answer it correctly (the option only changes what INIT offers).
            names = {item.dirent.name for item in fuse.readdirplus(ROOT_ID, handle.fh, 0, 65536)}
            assert names == {b".", b"..", b"file", b"dir"}
        finally:
            fuse.releasedir(ROOT_ID, handle.fh)


# -- submounts -------------------------------------------------------------------------------------


@pytest.fixture
def share_with_mount(share: Path) -> Iterator[Path]:
    mountpoint = share / "mnt"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "vfsd-test", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        (mountpoint / "on-tmpfs").write_bytes(b"t")
        yield share
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@needs_root
@pytest.mark.parametrize("announce", [True, False])
def test_submounts_are_announced_unless_disabled(
    start_daemon, daemon_kind: str, share_with_mount: Path, announce: bool
) -> None:
    options = () if announce else ("--no-announce-submounts",)
    with start_daemon(share_with_mount, *options) as session:
        fuse = session.client
        # Rust negotiates SUBMOUNTS whenever the guest offers it and only leaves the attribute
        # flag off; ours does not offer what it will never use.  The guest acts the same.
        assert bool(fuse.init_out.flags & InitFlag.SUBMOUNTS) == (announce or daemon_kind == "rust")
        mnt = fuse.lookup(ROOT_ID, "mnt")
        assert mnt.attr.ino == os.stat(share_with_mount / "mnt").st_ino
        assert bool(mnt.attr.flags & abi.ATTR_SUBMOUNT) == announce
        assert fuse.lookup(ROOT_ID, "dir").attr.flags & abi.ATTR_SUBMOUNT == 0, "same fs"
        assert fuse.lookup(mnt.nodeid, "on-tmpfs").attr.flags == 0, "files are never submounts"
        assert fuse.getattr(mnt.nodeid).attr.ino == mnt.attr.ino


# -- --thread-pool-size ----------------------------------------------------------------------------


LEASE_HOLDER = """
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
print("leased", flush=True)
sys.stdin.readline()
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
"""


POOLS = ["4", "auto"]


@needs_root
@pytest.mark.parametrize("pool", POOLS)
def test_thread_pool_serves_requests_while_one_blocks(start_daemon, daemon_kind: str,
                                                      share: Path, pool: str) -> None:
    """A read lease held on the host makes the daemon's OPEN for writing block until the
    lease is given up; with a thread pool the other requests in flight are served meanwhile
    (the automatic pool hands OPEN to a pool thread)."""
    if pool == "auto" and daemon_kind == "rust":
        pytest.skip("the Rust daemon has no automatic pool")
    with start_daemon(share, "--thread-pool-size", pool) as session:
        fuse = session.client
        nodeid = fuse.lookup(ROOT_ID, "file").nodeid
        holder = subprocess.Popen(
            [sys.executable, "-c", LEASE_HOLDER, str(share / "file")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "leased"
            blocked = fuse.submit(Opcode.OPEN, nodeid, abi.OPEN_IN.pack(os.O_WRONLY, 0), 16)
            lookups = [
                fuse.submit(Opcode.LOOKUP, ROOT_ID, name + b"\0", abi.ENTRY_OUT.size)
                for name in (b"file", b"dir", b"nothing")
            ]
            saved_timeout, fuse.timeout = fuse.timeout, 1.5
            try:
                results = [fuse.wait(ticket)[0] for ticket in lookups]
            finally:
                fuse.timeout = saved_timeout
                holder.stdin.write("release\n")
                holder.stdin.flush()
            assert results == [0, 0, errno.ENOENT]
            assert not blocked.done, "the OPEN was still waiting for the lease"
        finally:
            holder.stdin.close()
            holder.wait(10)
        error, payload = fuse.wait(blocked)
        assert error == 0
        fh = int.from_bytes(payload[:8], "little")
        fuse.release(nodeid, fh)


@pytest.mark.parametrize("pool", POOLS)
def test_thread_pool_handles_many_requests_in_flight(start_daemon, daemon_kind: str,
                                                     share: Path, pool: str) -> None:
    if pool == "auto" and daemon_kind == "rust":
        pytest.skip("the Rust daemon has no automatic pool")
    with start_daemon(share, "--thread-pool-size", pool) as session:
        fuse = session.client
        for index in range(32):
            (share / f"f{index}").write_bytes(b"x" * index)
        tickets = [
            fuse.submit(Opcode.LOOKUP, ROOT_ID, b"f%d\0" % index, abi.ENTRY_OUT.size, kick=False)
            for index in range(32)
        ]
        fuse.frontend.queues[1].kick()
        for index, ticket in reversed(list(enumerate(tickets))):
            error, payload = fuse.wait(ticket)
            assert error == 0
            assert int.from_bytes(payload[40 + 8 : 48 + 8], "little") == index, "attr.size"


# -- the socket ------------------------------------------------------------------------------------


@needs_root
def test_socket_group_sets_the_group_and_group_access(start_daemon, share: Path) -> None:
    group = next((entry for entry in grp.getgrall() if entry.gr_gid != 0), None)
    if group is None:
        pytest.skip("no group other than root on this host")
    with start_daemon(share, "--socket-group", group.gr_name, connect_client=False) as session:
        st = os.stat(session.socket_path)  # before connecting: Rust then unlinks the socket
        assert stat.S_ISSOCK(st.st_mode)
        assert st.st_gid == group.gr_gid
        assert stat.S_IMODE(st.st_mode) == 0o770, "owner and group may connect, others not"
        with session.connect() as fuse:
            assert fuse.getattr(ROOT_ID).attr.ino == os.stat(share).st_ino


def test_socket_without_group_is_private_to_the_owner(start_daemon, share: Path) -> None:
    with start_daemon(share, connect_client=False) as session:
        assert stat.S_IMODE(os.stat(session.socket_path).st_mode) == 0o700
        with session.connect() as fuse:
            fuse.getattr(ROOT_ID)


def test_fd_adopts_a_listening_socket(command_of, daemon_kind: str, share: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vfsd-fd-"))
    path = workdir / "passed.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    command = [arg.replace("{shared_dir}", str(share)) for arg in command_of(daemon_kind)]
    at = command.index("--socket-path")
    command[at : at + 2] = ["--fd", str(listener.fileno())]
    process = subprocess.Popen(
        command, pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    listener.close()
    try:
        with connect(path) as fuse:
            assert fuse.lookup(ROOT_ID, "file").attr.size == len(b"contents")
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        path.unlink(missing_ok=True)
        os.rmdir(workdir)


def test_second_daemon_on_the_same_socket_path_is_refused(
    start_daemon, command_of, daemon_kind: str, share: Path
) -> None:
    with start_daemon(share, connect_client=False) as first:
        command = [
            arg.replace("{socket_path}", str(first.socket_path)).replace("{shared_dir}", str(share))
            for arg in command_of(daemon_kind)
        ]
        second = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
        assert second.returncode != 0
        message = second.stdout + second.stderr
        if daemon_kind == "ours":
            assert "another virtiofsd instance is serving this socket path" in message, message
        else:
            assert "Error creating pid file" in message, message  # then strerror(EAGAIN)
        assert "Traceback" not in message
        assert first.socket_path.exists(), "the first daemon's socket is left alone"
        with first.connect() as fuse:
            assert fuse.getattr(ROOT_ID).attr.ino == os.stat(share).st_ino


def test_stale_socket_file_is_replaced(start_daemon, share: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vfsd-stale-"))
    path = workdir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: what a killed daemon leaves behind
    try:
        with start_daemon(share, socket_path=path) as session:
            assert session.client.lookup(ROOT_ID, "file").attr.size == len(b"contents")
    finally:
        path.unlink(missing_ok=True)
        for name in os.listdir(workdir):
            os.unlink(workdir / name)
        os.rmdir(workdir)


# -- process behaviour -----------------------------------------------------------------------------


def test_print_capabilities_describes_an_fs_backend(command_of, daemon_kind: str) -> None:
    program = command_of(daemon_kind)[: command_of(daemon_kind).index("--socket-path")]
    result = subprocess.run(
        [*program, "--print-capabilities"], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 0
    capabilities = json.loads(result.stdout)
    assert capabilities["type"] == "fs"
    assert "separate-options" in capabilities["features"]


def test_exit_status_is_0_when_the_frontend_disconnects(start_daemon, share: Path) -> None:
    with start_daemon(share) as session:
        session.client.close()
        session.client = None
        assert session.process.wait(10) == 0
        assert not session.socket_path.exists(), "the socket is removed on the way out"


def test_log_says_when_it_waits_and_when_a_client_connects(start_daemon, share: Path) -> None:
    waiting = re.compile(r"waiting for .*connection", re.IGNORECASE)
    connected = re.compile(r"client connected", re.IGNORECASE)
    with start_daemon(share, connect_client=False) as session:
        deadline = time.monotonic() + 5
        while not waiting.search(session.log_text()):
            assert time.monotonic() < deadline, session.log_text()
            time.sleep(0.02)
        assert not connected.search(session.log_text())
        with session.connect() as fuse:
            assert fuse.getattr(ROOT_ID).attr.ino == os.stat(share).st_ino
            assert connected.search(session.log_text())


# -- --killpriv-v2 and --allow-mmap ----------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("killpriv", [False, True])
def test_killpriv_v2_clears_setuid_and_setgid_as_for_an_unprivileged_writer(
    start_daemon, share: Path, killpriv: bool
) -> None:
    """With HANDLE_KILLPRIV_V2 the guest does not clear setuid/setgid itself on a write, a
    truncation or an O_TRUNC open by an unprivileged user: it flags the request, and the daemon
    (which runs with CAP_FSETID) must have the host kernel clear them.  Without the option the
    flags are not negotiated, the guest clears the bits itself with SETATTR, and a flagged
    request changes nothing."""
    names = ("written", "truncated", "opened")
    for name in names:
        path = share / name
        path.write_bytes(b"data")
        os.chown(path, 1000, 1000)
        os.chmod(path, 0o6755)
    option = "--killpriv-v2" if killpriv else "--no-killpriv-v2"
    with start_daemon(share, option) as session:
        fuse = session.client
        assert bool(fuse.init_out.flags & InitFlag.HANDLE_KILLPRIV_V2) == killpriv
        written = fuse.lookup(ROOT_ID, "written").nodeid
        handle = fuse.open(written, os.O_RDWR)
        assert fuse.write(written, handle.fh, 0, b"x", write_flags=abi.WRITE_KILL_SUIDGID) == 1
        fuse.release(written, handle.fh)
        truncated = fuse.lookup(ROOT_ID, "truncated").nodeid
        fuse.setattr(truncated, size=1, kill_suidgid=True)
        opened = fuse.lookup(ROOT_ID, "opened").nodeid
        handle = fuse.open(opened, os.O_RDWR | os.O_TRUNC, abi.OPEN_KILL_SUIDGID)
        fuse.release(opened, handle.fh)
        plain = fuse.lookup(ROOT_ID, "file").nodeid
        os.chmod(share / "file", 0o6755)
        handle = fuse.open(plain, os.O_RDWR)
        fuse.write(plain, handle.fh, 0, b"x")
        fuse.release(plain, handle.fh)
    for name in names:
        assert (share / name).stat().st_mode & 0o7777 == (0o755 if killpriv else 0o6755), name
    assert (share / "file").stat().st_mode & 0o7777 == 0o6755, "an unflagged write keeps them"
    assert (share / "opened").stat().st_size == 0 and (share / "truncated").stat().st_size == 1


@pytest.mark.parametrize("cache", ["never", "metadata", "auto"])
def test_allow_mmap_negotiates_direct_io_allow_mmap(start_daemon, share: Path, cache: str) -> None:
    """DIRECT_IO_ALLOW_MMAP lets the guest mmap files it opened with FOPEN_DIRECT_IO (the
    ``never`` and ``metadata`` cache modes; Linux 6.6 and later offer it); both daemons send it
    only with --allow-mmap."""
    for options, expected in ((("--allow-mmap",), True), ((), False)):
        with start_daemon(share, "--cache", cache, *options, init=False) as session:
            fuse = session.client
            fuse.init(LINUX_6_1_INIT_FLAGS | InitFlag.DIRECT_IO_ALLOW_MMAP)
            assert bool(fuse.init_out.flags & InitFlag.DIRECT_IO_ALLOW_MMAP) == expected
            nodeid = fuse.lookup(ROOT_ID, "file").nodeid
            handle = fuse.open(nodeid, os.O_RDWR)
            assert bool(handle.open_flags & abi.FOPEN_DIRECT_IO) == (cache != "auto")
            fuse.release(nodeid, handle.fh)
