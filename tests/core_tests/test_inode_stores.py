"""``--inode-file-handles``: the three inode stores (entry points ``never``, ``prefer``,
``mandatory``) seen through the front-end, against our daemon and the Rust one.

Every store must give the guest the same file system; what differs is what the daemon holds:
one O_PATH descriptor per known inode (``never``), or a file handle and no descriptor
(``prefer``, ``mandatory``; this machine runs as root on ext4 and tmpfs, which both export
handles).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseReplyError, running_daemon

from support.descriptors import path_fds
from support.mounts import mounted

STRATEGIES = ("never", "prefer", "mandatory")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "dir").mkdir()
    (directory / "file").write_bytes(b"data")
    return directory


def test_the_guest_sees_the_same_tree_with_every_store(start_daemon, share: Path,
                                                      strategy: str) -> None:
    with start_daemon(share, f"--inode-file-handles={strategy}") as session:
        fuse = session.client
        folder = fuse.lookup(ROOT_ID, "dir")
        file = fuse.lookup(ROOT_ID, "file")
        assert file.attr.ino == os.stat(share / "file").st_ino
        link = fuse.link(file.nodeid, folder.nodeid, "hard")
        assert link.nodeid == file.nodeid, "one inode, one node id, whichever name"
        created, opened = fuse.create(folder.nodeid, "new")
        fuse.write(created.nodeid, opened.fh, 0, b"written")
        fuse.release(created.nodeid, opened.fh)
        assert (share / "dir" / "new").read_bytes() == b"written"
        handle = fuse.open(file.nodeid)
        assert fuse.read(file.nodeid, handle.fh, 0, 100) == b"data"
        fuse.release(file.nodeid, handle.fh)
        fuse.forget(file.nodeid, 2)
        again = fuse.lookup(ROOT_ID, "file")
        assert again.nodeid != file.nodeid, "forgotten: a fresh node id"
        fuse.syncfs(ROOT_ID)


def test_a_host_rename_does_not_lose_the_inode(start_daemon, share: Path, strategy: str) -> None:
    with start_daemon(share, f"--inode-file-handles={strategy}") as session:
        fuse = session.client
        file = fuse.lookup(ROOT_ID, "file")
        os.rename(share / "file", share / "dir" / "moved")
        assert fuse.getattr(file.nodeid).attr.ino == file.attr.ino
        handle = fuse.open(file.nodeid)
        assert fuse.read(file.nodeid, handle.fh, 0, 100) == b"data"
        fuse.release(file.nodeid, handle.fh)


def test_open_unlink_write_read_keeps_working(start_daemon, share: Path, strategy: str) -> None:
    with start_daemon(share, f"--inode-file-handles={strategy}") as session:
        fuse = session.client
        file = fuse.lookup(ROOT_ID, "file")
        handle = fuse.open(file.nodeid, os.O_RDWR)
        os.unlink(share / "file")
        fuse.write(file.nodeid, handle.fh, 0, b"after unlink")
        assert fuse.read(file.nodeid, handle.fh, 0, 100) == b"after unlink"
        assert fuse.getattr(file.nodeid).attr.nlink == 0
        fuse.release(file.nodeid, handle.fh)


def test_only_never_holds_a_descriptor_per_inode(start_daemon, share: Path, strategy: str,
                                                 daemon_kind: str) -> None:
    for index in range(50):
        (share / "dir" / f"f{index}").touch()
    with start_daemon(share, f"--inode-file-handles={strategy}") as session:
        fuse = session.client
        folder = fuse.lookup(ROOT_ID, "dir")
        before = path_fds(session.process.pid)
        for index in range(50):
            fuse.lookup(folder.nodeid, f"f{index}")
        held = path_fds(session.process.pid) - before
        assert held == 50 if strategy == "never" else held < 5


def test_a_stale_handle_is_estale_for_the_guest(start_daemon, share: Path,
                                                daemon_kind: str) -> None:
    with start_daemon(share, "--inode-file-handles=mandatory") as session:
        fuse = session.client
        file = fuse.lookup(ROOT_ID, "file")
        os.unlink(share / "file")
        with pytest.raises(FuseReplyError) as info:
            fuse.getattr(file.nodeid)
        assert info.value.errno == errno.ESTALE


# -- submounts with colliding inode numbers ----------------------------------------------------


@pytest.fixture
def share_with_two_tmpfs(share: Path) -> Iterator[Path]:
    with contextlib.ExitStack() as mounts:
        for name in ("a", "b"):
            point = share / name
            point.mkdir()
            mounts.enter_context(mounted(point, "-t", "tmpfs", "-o", "size=1m", "vfsd-" + name))
            (point / "same").write_bytes(name.encode())
        assert os.stat(share / "a" / "same").st_ino == os.stat(share / "b" / "same").st_ino
        yield share


@needs_root
@pytest.mark.parametrize("sandbox", ["none", "namespace"])
def test_equal_inode_numbers_on_two_submounts_are_two_inodes(
        start_daemon, share_with_two_tmpfs: Path, strategy: str, sandbox: str) -> None:
    """Also inside the namespace sandbox, where the mount table that maps a submount's id to
    its folder is read through the descriptor kept across pivot_root."""
    with start_daemon(share_with_two_tmpfs, f"--inode-file-handles={strategy}",
                      "--sandbox", sandbox) as session:
        fuse = session.client
        a = fuse.lookup(ROOT_ID, "a")
        b = fuse.lookup(ROOT_ID, "b")
        assert a.attr.flags & abi.ATTR_SUBMOUNT and b.attr.flags & abi.ATTR_SUBMOUNT
        in_a = fuse.lookup(a.nodeid, "same")
        in_b = fuse.lookup(b.nodeid, "same")
        assert in_a.attr.ino == in_b.attr.ino and in_a.nodeid != in_b.nodeid
        for entry, content in ((in_a, b"a"), (in_b, b"b")):
            handle = fuse.open(entry.nodeid)
            assert fuse.read(entry.nodeid, handle.fh, 0, 10) == content
            fuse.release(entry.nodeid, handle.fh)
        fuse.syncfs(a.nodeid)
        fuse.syncfs(b.nodeid)


# -- start-up: when handles do not work --------------------------------------------------------

WITHOUT_DAC_READ_SEARCH = ["setpriv", "--inh-caps", "-dac_read_search",
                           "--bounding-set", "-dac_read_search", "--"]


def ours(*extra: str) -> list[str]:
    return [sys.executable, "-m", "virtiofsd", "--socket-path", "{socket_path}",
            "--shared-dir", "{shared_dir}", "--sandbox", "none", *extra]


@needs_root
def test_prefer_without_cap_dac_read_search_warns_once_and_uses_descriptors(share: Path) -> None:
    with running_daemon(WITHOUT_DAC_READ_SEARCH + ours(), share) as session:
        fuse = session.client
        before = path_fds(session.process.pid)
        fuse.lookup(ROOT_ID, "file")
        assert path_fds(session.process.pid) == before + 1
        log_text = session.log_text()
    warnings = [line for line in log_text.splitlines() if "file handles do not work" in line]
    assert len(warnings) == 1 and "CAP_DAC_READ_SEARCH" in warnings[0]


@needs_root
def test_mandatory_without_cap_dac_read_search_refuses_to_start(share: Path,
                                                                 tmp_path: Path) -> None:
    command = [arg.replace("{socket_path}", str(tmp_path / "s")).replace("{shared_dir}",
                                                                          str(share))
               for arg in WITHOUT_DAC_READ_SEARCH + ours("--inode-file-handles=mandatory")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "--inode-file-handles=mandatory: file handles do not work" in result.stderr
    assert "CAP_DAC_READ_SEARCH" in result.stderr


# -- the guest's descriptor budget -------------------------------------------------------------


def test_a_spent_budget_is_enfile_and_the_daemon_keeps_serving(share: Path) -> None:
    for index in range(300):
        (share / "dir" / f"f{index}").touch()
    # RLIMIT_NOFILE 256 leaves the guest 192 descriptors.
    with running_daemon(ours("--inode-file-handles=never", "--rlimit-nofile", "256"),
                        share) as session:
        fuse = session.client
        folder = fuse.lookup(ROOT_ID, "dir")
        refused = []
        for index in range(300):
            try:
                fuse.lookup(folder.nodeid, f"f{index}")
            except FuseReplyError as error:
                refused.append(error.errno)
        assert refused and set(refused) == {errno.ENFILE}
        with pytest.raises(FuseReplyError) as info:
            fuse.open(folder.nodeid, os.O_RDONLY | os.O_DIRECTORY)
        assert info.value.errno == errno.ENFILE
        fuse.batch_forget([(folder.nodeid, 1)])
        assert fuse.getattr(ROOT_ID).attr.ino == os.stat(share).st_ino
        assert session.process.poll() is None
        log_text = session.log_text()
    assert log_text.count("answering ENFILE") == 1


def test_a_spent_budget_never_shortens_a_readdirplus_listing(share: Path) -> None:
    """Entries the daemon has no descriptor left to look up come without attributes (node id
    0, which the guest kernel takes as a plain entry), instead of ending the listing early."""
    names = {f"f{index}" for index in range(300)}
    for name in names:
        (share / "dir" / name).touch()
    with running_daemon(ours("--inode-file-handles=never", "--rlimit-nofile", "256"),
                        share) as session:
        fuse = session.client
        folder = fuse.lookup(ROOT_ID, "dir")
        handle = fuse.opendir(folder.nodeid)
        seen, offset = [], 0
        while True:
            batch = fuse.readdirplus(folder.nodeid, handle.fh, offset, 16384)
            if not batch:
                break
            seen += batch
            offset = batch[-1].dirent.off
        listed = {entry.dirent.name.decode() for entry in seen} - {".", ".."}
        assert listed == names
        without_attributes = [entry for entry in seen if entry.entry.nodeid == 0
                              and entry.dirent.name not in (b".", b"..")]
        assert 0 < len(without_attributes) < len(names)


@pytest.fixture
def share_with_proc(share: Path) -> Iterator[Path]:
    """A procfs (which cannot make file handles) mounted under the share."""
    point = share / "proc"
    point.mkdir()
    with mounted(point, "-t", "proc", "proc"):
        yield share


@needs_root
def test_a_submount_without_handles_is_a_descriptor_or_an_error(share_with_proc: Path,
                                                                strategy: str) -> None:
    with running_daemon(ours(f"--inode-file-handles={strategy}"), share_with_proc) as session:
        fuse = session.client
        before = path_fds(session.process.pid)
        if strategy == "mandatory":
            with pytest.raises(FuseReplyError) as info:
                fuse.lookup(ROOT_ID, "proc")
            assert info.value.errno == errno.EOPNOTSUPP
            assert fuse.lookup(ROOT_ID, "file").attr.size == 4, "the rest still works"
        else:
            proc = fuse.lookup(ROOT_ID, "proc")
            assert proc.attr.flags & abi.ATTR_SUBMOUNT
            assert path_fds(session.process.pid) == before + 1, "held as a descriptor"
            assert fuse.lookup(proc.nodeid, "self").nodeid > 0
