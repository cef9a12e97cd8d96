"""The daemon started by an ordinary host user (the rootless recipe of the Rust README, without a
user namespace): ``--sandbox none`` and uid/gid translation onto the only ids the user owns.

Guest root and any other guest user create files that land as the daemon's user on the host,
and the guest sees them as 1000:1000 (``host:`` rule back); a chown to an id the user does not
own fails with the host's EPERM, cleanly.  Same assertions against the Rust reference.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseReplyError, running_daemon

from core_tests.conftest import RUST_REFERENCE, skip_unless_available
from support import unprivileged

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating a host user needs root")


@pytest.fixture(scope="module")
def user():
    return unprivileged.ordinary_user()


@pytest.fixture(scope="module")
def ours_tree():
    tree = unprivileged.daemon_tree()
    yield tree
    shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture
def folders(user):
    share = unprivileged.user_folder(user, "vfs-unpriv-share-")
    sockets = unprivileged.user_folder(user, "vfs-unpriv-sock-")
    yield share, sockets
    shutil.rmtree(share, ignore_errors=True)
    shutil.rmtree(sockets, ignore_errors=True)


def command(kind: str, user, tree) -> list[str]:
    skip_unless_available(kind)
    if kind == "ours":
        return unprivileged.daemon_command_as(user, tree)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            str(RUST_REFERENCE)]


def test_guest_ids_squash_onto_the_daemons_user(daemon_kind: str, user, ours_tree, folders) -> None:
    share, sockets = folders
    (share / "theirs").write_bytes(b"x")
    os.chown(share / "theirs", user.pw_uid, user.pw_gid)
    argv = [*command(daemon_kind, user, ours_tree),
            "--socket-path", "{socket_path}", "--shared-dir", "{shared_dir}", "--sandbox", "none",
            "--translate-uid", f"squash-guest:0:{user.pw_uid}:4294967295",
            "--translate-gid", f"squash-guest:0:{user.pw_gid}:4294967295",
            "--translate-uid", f"host:{user.pw_uid}:1000:1",
            "--translate-gid", f"host:{user.pw_gid}:1000:1"]
    with running_daemon(argv, share, socket_path=sockets / "vhost.sock") as daemon:
        fuse = daemon.client
        by_root = fuse.mkdir(ROOT_ID, "by-root", 0o755)
        with fuse.acting_as(1000, 1000):
            entry, handle = fuse.create(ROOT_ID, "by-user", 0o644, os.O_RDWR | os.O_CREAT)
            fuse.release(entry.nodeid, handle.fh)
        with fuse.acting_as(31337, 31337):
            fuse.mknod(ROOT_ID, "by-stranger", stat.S_IFIFO | 0o600)
        for name in ("by-root", "by-user", "by-stranger"):
            st = os.lstat(share / name)
            assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), name
        assert (by_root.attr.uid, by_root.attr.gid) == (1000, 1000)
        assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
        theirs = fuse.lookup(ROOT_ID, "theirs")
        assert (theirs.attr.uid, theirs.attr.gid) == (1000, 1000)
        # chown to any guest id squashes onto the user: allowed, nothing changes on the host.
        assert fuse.setattr(theirs.nodeid, uid=0, gid=0).attr.uid == 1000


def test_a_chown_outside_the_users_ids_fails_cleanly(daemon_kind: str, user, ours_tree,
                                                     folders) -> None:
    share, sockets = folders
    argv = [*command(daemon_kind, user, ours_tree),
            "--socket-path", "{socket_path}", "--shared-dir", "{shared_dir}", "--sandbox", "none",
            "--translate-uid", f"map:0:{user.pw_uid}:1", "--translate-gid", f"map:0:{user.pw_gid}:1"]
    with running_daemon(argv, share, socket_path=sockets / "vhost.sock") as daemon:
        fuse = daemon.client
        made = fuse.mkdir(ROOT_ID, "made", 0o755)
        assert (made.attr.uid, made.attr.gid) == (0, 0)
        assert os.lstat(share / "made").st_uid == user.pw_uid
        with pytest.raises(FuseReplyError) as refused:
            fuse.setattr(made.nodeid, uid=5)
        assert refused.value.errno == errno.EPERM
        assert os.lstat(share / "made").st_uid == user.pw_uid
        assert fuse.getattr(made.nodeid).attr.uid == 0


def test_modcaps_adding_a_capability_it_lacks_is_warned_about(user, ours_tree, folders) -> None:
    """An ordinary user holds no capability to keep: --modcaps=+sys_admin serves (the Rust
    daemon leaves an unprivileged process's capabilities alone) and says so at start."""
    share, sockets = folders
    argv = [*command("ours", user, ours_tree), "--socket-path", "{socket_path}",
            "--shared-dir", "{shared_dir}", "--sandbox", "none", "--modcaps=+sys_admin"]
    with running_daemon(argv, share, socket_path=sockets / "vhost.sock") as daemon:
        assert daemon.client.mkdir(ROOT_ID, "made", 0o755).attr.uid == user.pw_uid
        log_text = daemon.log_text()
    assert re.search(r"WARN.*--modcaps=\+sys_admin: this process does not hold CAP_SYS_ADMIN "
                     r".*running without it", log_text), log_text
