"""``--uid-map``/``--gid-map``: the namespace sandbox run by an ordinary user, with a range of
its subordinate ids (``/etc/subuid``, ``/etc/subgid``) mapped into the user namespace through
newuidmap/newgidmap, and the ``unshare -r --map-auto ... --sandbox chroot`` recipe.

The seed README's example: ``--uid-map=:0:100000:65536:``: guest root is the host's 100000, a
guest id N below 65536 is 100000+N, a chown inside that range works, a chown outside it fails
with the kernel's EINVAL (the id has no meaning in the namespace) and the share keeps working.
Same assertions against the Rust reference.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseReplyError, running_daemon

from core_tests.conftest import RUST_REFERENCE, skip_unless_available
# The same daemon tree, user-owned folders and command lines as the --sandbox none recipe (the
# folders fixture takes this module's user, who has subordinate ids).
from core_tests.test_unprivileged_daemon import command, folders, ours_tree  # noqa: F401
from support import unprivileged

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating a host user needs root")

SUB_BASE = unprivileged.SUBORDINATE_BASE
SUB_COUNT = unprivileged.SUBORDINATE_COUNT


@pytest.fixture(scope="module")
def user():
    found = unprivileged.ordinary_user()
    unprivileged.give_subordinate_ids(found)
    return found


def test_a_subordinate_range_maps_guest_ids(daemon_kind: str, user, ours_tree, folders) -> None:
    unprivileged.require_newuidmap()
    share, sockets = folders
    # The share belongs to the id that becomes namespace root (it owns nothing else there).
    os.chown(share, SUB_BASE, SUB_BASE)
    argv = [*command(daemon_kind, user, ours_tree),
            "--socket-path", "{socket_path}", "--shared-dir", "{shared_dir}",
            "--uid-map", f":0:{SUB_BASE}:{SUB_COUNT}:", "--gid-map", f":0:{SUB_BASE}:{SUB_COUNT}:"]
    with running_daemon(argv, share, socket_path=sockets / "vhost.sock") as daemon:
        fuse = daemon.client
        made = fuse.mkdir(ROOT_ID, "by-root", 0o777)
        assert (made.attr.uid, made.attr.gid) == (0, 0)
        assert (os.lstat(share / "by-root").st_uid, os.lstat(share / "by-root").st_gid) == (
            SUB_BASE, SUB_BASE)
        with fuse.acting_as(1000, 1000):
            entry, handle = fuse.create(made.nodeid, "by-user", 0o644, os.O_RDWR | os.O_CREAT)
            fuse.release(entry.nodeid, handle.fh)
        assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
        st = os.lstat(share / "by-root" / "by-user")
        assert (st.st_uid, st.st_gid) == (SUB_BASE + 1000, SUB_BASE + 1000)
        assert fuse.setattr(entry.nodeid, uid=5, gid=7).attr.uid == 5
        st = os.lstat(share / "by-root" / "by-user")
        assert (st.st_uid, st.st_gid) == (SUB_BASE + 5, SUB_BASE + 7)
        with pytest.raises(FuseReplyError) as refused:
            fuse.setattr(entry.nodeid, uid=SUB_COUNT + 5)
        assert refused.value.errno in (errno.EINVAL, errno.EPERM)
        assert os.lstat(share / "by-root" / "by-user").st_uid == SUB_BASE + 5
        assert fuse.getattr(entry.nodeid).attr.uid == 5
        # A host file owned by an id outside the map shows as the overflow id, 65534.
        (share / "outsider").write_bytes(b"x")
        assert fuse.lookup(ROOT_ID, "outsider").attr.uid == 65534
    if daemon_kind == "ours":
        # The waiting parent kept the user's ids: it could remove the socket from its folder.
        assert not (sockets / "vhost.sock").exists()


def test_a_range_outside_the_subordinate_ids_is_refused(daemon_kind: str, user, ours_tree,
                                                         folders) -> None:
    unprivileged.require_newuidmap()
    share, sockets = folders
    argv = [*command(daemon_kind, user, ours_tree), "--socket-path", str(sockets / "vhost.sock"),
            "--shared-dir", str(share), "--uid-map", f":0:{SUB_BASE + SUB_COUNT}:10:"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode != 0
    assert "newuidmap" in done.stderr or "uid map" in done.stderr, done.stderr
    assert not (sockets / "vhost.sock").exists() or daemon_kind == "rust"


def test_unshare_map_auto_then_sandbox_chroot(daemon_kind: str, user, ours_tree,
                                              folders) -> None:
    """``unshare -r --map-auto -- virtiofsd ... --sandbox chroot``: namespace root is the user,
    namespace ids 1.. are the subordinate ids; the daemon runs as (namespace) root."""
    unprivileged.require_newuidmap()
    share, sockets = folders
    skip_unless_available(daemon_kind)
    program = (unprivileged.daemon_command_from(ours_tree) if daemon_kind == "ours"
               else [str(RUST_REFERENCE)])
    argv = [*unprivileged.as_user(user), "unshare", "-r", "--map-auto", "--", *program,
            "--socket-path", "{socket_path}", "--shared-dir", "{shared_dir}",
            "--sandbox", "chroot"]
    with running_daemon(argv, share, socket_path=sockets / "vhost.sock") as daemon:
        fuse = daemon.client
        made = fuse.mkdir(ROOT_ID, "by-root", 0o777)
        assert (made.attr.uid, made.attr.gid) == (0, 0)
        st = os.lstat(share / "by-root")
        assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
        with fuse.acting_as(1000, 1000):
            entry = fuse.mkdir(made.nodeid, "by-user", 0o755)
        assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
        st = os.lstat(share / "by-root" / "by-user")
        assert (st.st_uid, st.st_gid) == (SUB_BASE + 999, SUB_BASE + 999)
        assert fuse.setattr(entry.nodeid, uid=5).attr.uid == 5
        assert os.lstat(share / "by-root" / "by-user").st_uid == SUB_BASE + 4
        with pytest.raises(FuseReplyError) as refused:
            fuse.setattr(entry.nodeid, uid=SUB_COUNT + 5)
        assert refused.value.errno in (errno.EINVAL, errno.EPERM)
        assert fuse.getattr(entry.nodeid).attr.uid == 5


@pytest.mark.parametrize("as_root, sandbox", [(True, "namespace"), (False, "none"),
                                              (False, "chroot")])
def test_maps_are_refused_where_no_user_namespace_is_made(daemon_kind: str, user, ours_tree,
                                                          folders, as_root, sandbox) -> None:
    """As in the Rust daemon: root needs no namespace, and chroot/none create none."""
    share, sockets = folders
    if as_root:
        skip_unless_available(daemon_kind)
        prefix = ([sys.executable, "-m", "virtiofsd"] if daemon_kind == "ours"
                  else [str(RUST_REFERENCE)])
    else:
        prefix = command(daemon_kind, user, ours_tree)
    argv = [*prefix, "--socket-path", str(sockets / "vhost.sock"), "--shared-dir", str(share),
            "--sandbox", sandbox, "--gid-map", f":0:{SUB_BASE}:{SUB_COUNT}:"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode != 0
    if sandbox != "chroot":  # both daemons refuse chroot to an ordinary user first
        assert "gid_map can only be used" in done.stderr or \
            "--gid-map can only be used" in done.stderr, done.stderr
