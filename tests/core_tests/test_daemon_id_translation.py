"""``--translate-uid`` / ``--translate-gid``: guest ids become host ids on the way in (request
credentials of creations, chown) and host ids become guest ids on the way out (attributes),
against our daemon and the Rust reference, with the same assertions.

The six forms of the Rust README: ``guest`` and ``squash-guest`` map guest to host only,
``host`` and ``squash-host`` host to guest only, ``map`` both ways, ``forbid-guest`` refuses
a guest id for new files and chown with EPERM.  Ids no rule covers pass unchanged.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseReplyError

from core_tests.conftest import skip_unless_available

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating as other ids needs root")


def fuse_error(call, *args, **kwargs) -> int:
    with pytest.raises(FuseReplyError) as failure:
        call(*args, **kwargs)
    return failure.value.errno


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    return directory


def test_map_translates_both_ways(start_daemon, share: Path) -> None:
    host_owned = share / "host-owned"
    host_owned.write_bytes(b"x")
    os.chown(host_owned, 2005, 3007)
    unmapped = share / "unmapped"
    unmapped.write_bytes(b"x")
    os.chown(unmapped, 50, 60)
    with start_daemon(share, "--translate-uid", "map:1000:2000:10",
                      "--translate-gid", "map:1000:3000:10") as daemon:
        fuse = daemon.client
        with fuse.acting_as(1000, 1001):
            entry, handle = fuse.create(ROOT_ID, "made", 0o644, os.O_RDWR | os.O_CREAT)
            fuse.release(entry.nodeid, handle.fh)
            folder = fuse.mkdir(ROOT_ID, "folder", 0o755)
            fuse.symlink(ROOT_ID, "link", "made")
            fuse.mknod(ROOT_ID, "fifo", stat.S_IFIFO | 0o600)
        for name in ("made", "folder", "link", "fifo"):
            assert owner(share / name) == (2000, 3001), name
        assert (entry.attr.uid, entry.attr.gid) == (1000, 1001)
        assert (folder.attr.uid, folder.attr.gid) == (1000, 1001)
        looked_up = fuse.lookup(ROOT_ID, "host-owned")
        assert (looked_up.attr.uid, looked_up.attr.gid) == (1005, 1007)
        assert (fuse.getattr(looked_up.nodeid).attr.uid) == 1005
        other = fuse.lookup(ROOT_ID, "unmapped")
        assert (other.attr.uid, other.attr.gid) == (50, 60)
        out = fuse.setattr(looked_up.nodeid, uid=1002, gid=1003)
        assert owner(host_owned) == (2002, 3003)
        assert (out.attr.uid, out.attr.gid) == (1002, 1003)
        fuse.setattr(looked_up.nodeid, uid=77)
        assert owner(host_owned) == (77, 3003)


def test_squash_guest_with_a_host_mapping_back(start_daemon, share: Path) -> None:
    """The README's example for an unprivileged daemon: every guest id creates as 1001:100 on
    the host, which the guest sees as 1000:1000; other host ids show unchanged."""
    (share / "root-owned").write_bytes(b"x")
    with start_daemon(share,
                      "--translate-uid", "squash-guest:0:1001:4294967295",
                      "--translate-gid", "squash-guest:0:100:4294967295",
                      "--translate-uid", "host:1001:1000:1",
                      "--translate-gid", "host:100:1000:1") as daemon:
        fuse = daemon.client
        entry = fuse.mkdir(ROOT_ID, "by-root", 0o755)
        with fuse.acting_as(4242, 4343):
            other = fuse.mkdir(ROOT_ID, "by-someone", 0o755)
        assert owner(share / "by-root") == (1001, 100)
        assert owner(share / "by-someone") == (1001, 100)
        assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
        assert (other.attr.uid, other.attr.gid) == (1000, 1000)
        root_owned = fuse.lookup(ROOT_ID, "root-owned")
        assert (root_owned.attr.uid, root_owned.attr.gid) == (0, 0)


def test_guest_and_host_forms_are_one_way(start_daemon, share: Path) -> None:
    """``guest:`` only maps what the guest sends, ``squash-host:`` only what it is shown."""
    shown = share / "shown"
    shown.write_bytes(b"x")
    os.chown(shown, 5003, 0)
    with start_daemon(share, "--translate-uid", "guest:1000:6000:10",
                      "--translate-uid", "squash-host:5000:65534:10") as daemon:
        fuse = daemon.client
        with fuse.acting_as(1000, 0):
            made = fuse.mkdir(ROOT_ID, "made", 0o755)
        assert owner(share / "made")[0] == 6000
        assert made.attr.uid == 6000  # no host-to-guest rule covers 6000
        assert fuse.lookup(ROOT_ID, "shown").attr.uid == 65534


def test_forbid_guest_refuses_new_files_and_chown_with_eperm(start_daemon, daemon_kind: str,
                                                            share: Path) -> None:
    """The Rust daemon 1.13.2 answers EIO to a creation or chown with a forbidden id (its error is not a
    system call's, so it loses the errno); ours answers EPERM, what the README promises ("returns
    an error") and what the guest's tools can explain."""
    refused = errno.EPERM if daemon_kind == "ours" else errno.EIO
    (share / "file").write_bytes(b"x")
    with start_daemon(share, "--translate-uid", "forbid-guest:5000:10",
                      "--translate-gid", "forbid-guest:7000:1") as daemon:
        fuse = daemon.client
        with fuse.acting_as(5004, 0):
            assert fuse_error(fuse.mkdir, ROOT_ID, "forbidden", 0o755) == refused
        with fuse.acting_as(0, 7000):
            assert fuse_error(fuse.mknod, ROOT_ID, "forbidden-gid",
                              stat.S_IFIFO | 0o600) == refused
        assert not (share / "forbidden").exists()
        assert not (share / "forbidden-gid").exists()
        file = fuse.lookup(ROOT_ID, "file")
        assert fuse_error(fuse.setattr, file.nodeid, uid=5009) == refused
        assert fuse_error(fuse.setattr, file.nodeid, gid=7000) == refused
        assert owner(share / "file") == (0, 0)
        with fuse.acting_as(5004, 0):
            assert fuse.getattr(file.nodeid).attr.uid == 0  # reading is not using the id
        fuse.setattr(file.nodeid, uid=5010)
        assert owner(share / "file")[0] == 5010


@pytest.mark.parametrize("options", [
    ("--translate-uid", "guest:0:100:10", "--translate-uid", "map:5:200:10"),
    ("--translate-gid", "host:100:0:10", "--translate-gid", "squash-host:109:0:1"),
    ("--translate-uid", "guest:4294967295:0:2"),
    ("--translate-uid", "guest:0:100"),
    ("--translate-uid", "sideways:0:100:1"),
    ("--translate-uid", "guest:0:x:1"),
    ("--translate-uid", "map:0:1000:1", "--posix-acl"),
])
def test_bad_translations_are_refused_at_start(command_of, daemon_kind: str, share: Path,
                                               options: tuple[str, ...]) -> None:
    skip_unless_available(daemon_kind)
    argv = [arg.replace("{socket_path}", str(share.parent / "s.sock"))
               .replace("{shared_dir}", str(share)) for arg in command_of(daemon_kind, *options)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert result.returncode != 0


def test_access_compares_translated_ids(start_daemon, share: Path) -> None:
    """ACCESS compares the guest caller with the guest's view of the owner (host 2000 is guest
    1000), so it agrees with the permission check the guest kernel makes on the same attributes:
    guest 2000 does not own the file, whatever its host id."""
    private = share / "private"
    private.write_bytes(b"x")
    os.chown(private, 2000, 3000)
    os.chmod(private, 0o600)
    with start_daemon(share, "--translate-uid", "map:1000:2000:10",
                      "--translate-gid", "map:1000:3000:10") as daemon:
        fuse = daemon.client
        nodeid = fuse.lookup(ROOT_ID, "private").nodeid
        with fuse.acting_as(1000, 1000):
            fuse.access(nodeid, os.R_OK | os.W_OK)
        with fuse.acting_as(1001, 1000):
            assert fuse_error(fuse.access, nodeid, os.R_OK) == errno.EACCES
        with fuse.acting_as(2000, 3000):
            assert fuse_error(fuse.access, nodeid, os.R_OK) == errno.EACCES
