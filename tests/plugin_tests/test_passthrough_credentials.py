"""Creation runs as the guest caller: ownership and permission checks on the host are the
caller's, and the switch stays in the calling thread."""

from __future__ import annotations

import errno
import os
import stat
import threading

ROOT = 1
USER, GROUP = 1000, 1000


def test_files_created_by_a_user_belong_to_that_user(fs, shared):
    (shared / "home").mkdir()
    os.chown(shared / "home", USER, GROUP)
    home = fs.lookup(b"home").nodeid
    user = fs.req(USER, GROUP)
    created = fs.create(b"file", parent=home, req=user)
    folder = fs.hook.virtiofsd_fuse_mkdir(req=user, parent=home, name=b"dir", mode=0o755,
                                          umask=0)
    node = fs.hook.virtiofsd_fuse_mknod(req=user, parent=home, name=b"fifo",
                                        mode=stat.S_IFIFO | 0o600, rdev=0, umask=0)
    link = fs.hook.virtiofsd_fuse_symlink(req=user, parent=home, name=b"link", target=b"file")
    for name, entry in [("file", created.entry), ("dir", folder), ("fifo", node), ("link", link)]:
        host = os.lstat(shared / "home" / name)
        assert (host.st_uid, host.st_gid) == (USER, GROUP), name
        assert (entry.st.st_uid, entry.st.st_gid) == (USER, GROUP), name
    assert os.geteuid() == 0 and os.getegid() == 0  # switched back


def test_a_user_with_known_groups_cannot_create_in_a_root_folder(fs, shared, expect_errno):
    (shared / "locked").mkdir(mode=0o755)
    locked = fs.lookup(b"locked").nodeid
    user = fs.req(USER, GROUP, groups=(GROUP,))
    with expect_errno(errno.EACCES):
        fs.create(b"file", parent=locked, req=user)
    with expect_errno(errno.EACCES):
        fs.hook.virtiofsd_fuse_mkdir(req=user, parent=locked, name=b"dir", mode=0o755, umask=0)
    with expect_errno(errno.EACCES):
        fs.hook.virtiofsd_fuse_symlink(req=user, parent=locked, name=b"l", target=b"x")
    assert os.listdir(shared / "locked") == []
    assert os.geteuid() == 0
    # Root itself is not switched and may create there.
    assert fs.create(b"file", parent=locked).entry.st.st_uid == 0


def test_supplementary_groups_grant_access(fs, shared, expect_errno):
    (shared / "team").mkdir(mode=0o770)
    os.chown(shared / "team", 0, 4242)
    team = fs.lookup(b"team").nodeid
    with expect_errno(errno.EACCES):
        fs.create(b"nope", parent=team, req=fs.req(USER, GROUP, groups=(GROUP,)))
    reply = fs.create(b"yes", parent=team, req=fs.req(USER, GROUP, groups=(4242,)))
    assert reply.entry.st.st_uid == USER
    assert 4242 not in os.getgroups()  # the caller's groups were this request's only


def test_without_the_groups_extension_the_guests_check_is_trusted(fs, shared):
    """A Linux guest before 6.3 sends no supplementary groups; the daemon has dropped its own,
    so it trusts the guest kernel's permission check (as the Rust daemon does) and only the
    ownership of the new file is the caller's."""
    (shared / "team").mkdir(mode=0o770)
    os.chown(shared / "team", 0, 4242)
    team = fs.lookup(b"team").nodeid
    reply = fs.create(b"member-file", parent=team, req=fs.req(USER, GROUP))
    host = os.stat(shared / "team" / "member-file")
    assert (host.st_uid, host.st_gid) == (USER, GROUP)
    assert reply.entry.st.st_uid == USER


def test_creating_as_a_user_does_not_change_other_threads(fs, shared):
    (shared / "home").mkdir()
    os.chown(shared / "home", USER, GROUP)
    home = fs.lookup(b"home").nodeid
    stop = threading.Event()
    seen = set()

    def watch():
        while not stop.is_set():
            seen.add(os.geteuid())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for index in range(50):
            fs.create(f"f{index}".encode(), parent=home, req=fs.req(USER, GROUP))
    finally:
        stop.set()
        watcher.join()
    assert seen == {0}
