"""Regression tests for the virtiofsd CVEs of issue 5, through the front-end, on both daemons
(``--sandbox none``: the mode in which nothing but the daemon's own checks stands between the
guest and the host).  CVE-2021-20263 (remapped ``security.capability``) belongs to the xattr
tests.

- CVE-2026-47243: an absolute path as a symlink's *name* was honoured with ``--sandbox none``,
  planting a link anywhere on the host.  Names are single components (``names.py``).
- CVE-2020-35517: a guest-created device node (or FIFO, socket) opened by the daemon opens the
  host's device; magic links reached through the share.  Only regular files and folders are
  ever reopened (``state.reopen``), and lookups refuse magic links (openat2).
- CVE-2022-0358: a file created in a setgid folder by a guest user who is not in its group kept
  the setgid bit, because the daemon created it with its own supplementary groups.  Requests
  run with the guest's groups only (``thread_credentials``), so the kernel clears the bit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from virtiofsd.fuse.abi import ROOT_ID

from hostile_helpers import (fuse_error, outside, snapshot,  # noqa: F401 (fixtures)
                             still_serving)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes and acting "
                                "as other users needs root")


# -- CVE-2026-47243 --------------------------------------------------------------------------------


def test_cve_2026_47243_absolute_symlink_name_is_refused(request, workdir, outside: Path) -> None:
    """SYMLINK named with an absolute host path, and with a path climbing out of the root."""
    if workdir.kind == "rust":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="the Rust daemon (1.13) with --sandbox none creates the link "
            "where the name points, outside the shared folder"))
    fuse = workdir.client
    before = snapshot(outside)
    share = workdir.session.shared_dir
    absolute = os.fsencode(outside / "planted-absolute")
    climbing = os.fsencode(os.path.relpath(outside / "planted-climbing", share))
    assert climbing.startswith(b"../")
    for name in (absolute, climbing):
        assert fuse_error(fuse.symlink, ROOT_ID, name, b"/etc/shadow") == errno.EINVAL
    assert snapshot(outside) == before
    assert not os.path.lexists(outside / "planted-absolute")
    assert not os.path.lexists(outside / "planted-climbing")


# -- CVE-2020-35517 --------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("kind, rdev", [
    ("char-null", (stat.S_IFCHR, os.makedev(1, 3))),
    ("char-mem", (stat.S_IFCHR, os.makedev(1, 1))),
    ("block-loop", (stat.S_IFBLK, os.makedev(7, 0))),
    ("fifo", (stat.S_IFIFO, 0)),
    ("socket", (stat.S_IFSOCK, 0)),
], ids=lambda value: value if isinstance(value, str) else "")
def test_cve_2020_35517_special_files_made_by_the_guest_are_never_opened(
        workdir, kind: str, rdev: tuple[int, int]) -> None:
    """The guest (root in the guest) may create the node; opening it, truncating it or
    reading through it is refused, and never blocks (a FIFO without a writer)."""
    fuse = workdir.client
    file_type, device = rdev
    encoded = (os.major(device) << 8) | os.minor(device)  # the kernel's new_encode_dev
    entry = fuse.mknod(workdir.nodeid, kind, file_type | 0o666, encoded)
    st = os.lstat(workdir.host / kind)
    assert stat.S_IFMT(st.st_mode) == file_type and st.st_rdev == device
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC):
        assert fuse_error(fuse.open, entry.nodeid, flags) == errno.EBADF
    assert fuse_error(fuse.opendir, entry.nodeid) in (errno.EBADF, errno.ENOTDIR)
    assert fuse_error(fuse.setattr, entry.nodeid, size=0) == errno.EBADF


def test_cve_2020_35517_magic_links_in_the_share_lead_nowhere(workdir, outside: Path) -> None:
    """A host process left a link to a ``/proc`` magic link in the share: looking it up gives
    the link itself, and nothing opens what it points to."""
    fuse, host = workdir.client, workdir.host
    victim = os.open(outside / "victim", os.O_RDONLY)
    try:
        os.symlink(f"/proc/{os.getpid()}/fd/{victim}", host / "magic")
        os.symlink("/proc/self/root", host / "root-of-daemon")
        for name in ("magic", "root-of-daemon"):
            entry = fuse.lookup(workdir.nodeid, name)
            assert stat.S_ISLNK(entry.attr.mode)
            assert fuse_error(fuse.open, entry.nodeid, os.O_RDWR) in (errno.EBADF, errno.ELOOP)
            assert fuse_error(fuse.lookup, entry.nodeid, "etc") in (errno.ENOTDIR, errno.EBADF)
    finally:
        os.close(victim)


# -- CVE-2022-0358 ---------------------------------------------------------------------------------


#: A group only the daemon is in: its supplementary group for this test, never the guest's.
DAEMON_GROUP = 4242


@needs_root
def test_cve_2022_0358_setgid_folder_does_not_grant_its_group(start_daemon, tmp_path) -> None:
    """The daemon runs with supplementary group 4242; a folder of group 4242 is setgid and
    writable by all; guest user 1000:1000 creates in it asking for the setgid bit.  The new
    file takes the folder's group, but the bit must be gone: the creator is not in group 4242
    (the daemon is, which was the bug).  A folder made there keeps the setgid bit (inherited,
    not asked for), as the kernel does."""
    share = tmp_path / "share"
    folder = share / "setgid"
    folder.mkdir(parents=True)
    os.chown(folder, 0, DAEMON_GROUP)
    os.chmod(folder, 0o2777)
    saved_groups = os.getgroups()
    os.setgroups([DAEMON_GROUP])  # inherited by the daemon started below
    try:
        daemon = start_daemon(share)
        session = daemon.__enter__()
    finally:
        os.setgroups(saved_groups)
    try:
        fuse = session.client
        nodeid = fuse.lookup(ROOT_ID, "setgid").nodeid
        with fuse.acting_as(1000, 1000):
            entry, opened = fuse.create(nodeid, "created", 0o2755)
            fuse.release(entry.nodeid, opened.fh)
            fuse.mknod(nodeid, "made", stat.S_IFREG | 0o2755)
            fuse.mkdir(nodeid, "subfolder", 0o755)
    finally:
        daemon.__exit__(None, None, None)
    for name in ("created", "made"):
        st = os.lstat(folder / name)
        assert (st.st_uid, st.st_gid) == (1000, DAEMON_GROUP), name
        assert not st.st_mode & stat.S_ISGID, f"{name}: setgid kept for a non-member"
    st = os.lstat(folder / "subfolder")
    assert st.st_gid == DAEMON_GROUP and st.st_mode & stat.S_ISGID
