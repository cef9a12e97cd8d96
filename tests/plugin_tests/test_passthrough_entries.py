"""Passthrough names and attributes: LOOKUP, FORGET, GETATTR, SETATTR, READLINK, ACCESS,
STATFS, INIT/DESTROY, and hostile names."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from virtiofsd.errors import ConfigError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import AttrReply, EntryReply, StatfsReply
from virtiofsd.config import CacheMode, Config, Sandbox
from virtiofsd.manager import make_plugin_manager
from virtiofsd_plugins.passthrough import plugin

ROOT = 1


def test_lookup_returns_the_host_attributes(fs, shared):
    (shared / "file").write_bytes(b"hello")
    entry = fs.lookup(b"file")
    assert isinstance(entry, EntryReply)
    host = os.lstat(shared / "file")
    assert entry.nodeid > ROOT
    assert entry.st.st_ino == host.st_ino and entry.st.st_size == 5
    assert entry.generation == 0
    assert entry.entry_timeout == entry.attr_timeout == 1.0  # cache=auto
    assert entry.attr_flags == 0


def test_timeouts_follow_the_cache_mode(make_fs, shared):
    (shared / "file").touch()
    entry = make_fs(cache=CacheMode.ALWAYS).lookup(b"file")
    assert entry.entry_timeout == entry.attr_timeout == 86400.0


def test_second_lookup_gives_the_same_node_and_counts(fs, shared):
    (shared / "file").touch()
    os.link(shared / "file", shared / "alias")
    first = fs.lookup(b"file")
    second = fs.lookup(b"file")
    through_link = fs.lookup(b"alias")
    assert first.nodeid == second.nodeid == through_link.nodeid
    assert fs.inodes.refcount(first.nodeid) == 3


def test_lookup_does_not_follow_symlinks(fs, shared):
    (shared / "target").write_bytes(b"x")
    (shared / "link").symlink_to("target")
    entry = fs.lookup(b"link")
    assert stat.S_ISLNK(entry.st.st_mode)
    assert entry.nodeid != fs.lookup(b"target").nodeid


def test_lookup_of_a_missing_name_is_enoent(fs, expect_errno):
    with expect_errno(errno.ENOENT):
        fs.lookup(b"missing")


@pytest.mark.parametrize("name, code", [
    (b"a/b", errno.EINVAL),
    (b"../etc", errno.EINVAL),
    (b"/etc", errno.EINVAL),
    (b"nul\0byte", errno.EINVAL),
    (b"", errno.ENOENT),
])
def test_lookup_refuses_hostile_names(fs, shared, expect_errno, name, code):
    (shared / "a").mkdir()
    (shared / "a" / "b").touch()
    with expect_errno(code):
        fs.lookup(name)


def test_dot_dot_of_the_root_stays_at_the_root(fs):
    assert fs.lookup(b"..").nodeid == ROOT
    assert fs.lookup(b".").nodeid == ROOT


def test_dot_dot_of_a_subfolder_is_its_parent(fs, shared):
    (shared / "sub").mkdir()
    sub = fs.lookup(b"sub")
    assert fs.lookup(b"..", parent=sub.nodeid).nodeid == ROOT
    assert fs.lookup(b".", parent=sub.nodeid).nodeid == sub.nodeid


def test_unknown_node_is_ebadf(fs, expect_errno):
    with expect_errno(errno.EBADF):
        fs.hook.virtiofsd_fuse_getattr(req=fs.req(), nodeid=999, fh=None)
    with expect_errno(errno.EBADF):
        fs.lookup(b"x", parent=999)


def test_forget_releases_the_inode_and_saturates(fs, shared):
    (shared / "file").touch()
    nodeid = fs.lookup(b"file").nodeid
    fs.lookup(b"file")
    fs.hook.virtiofsd_fuse_forget(req=fs.req(), nodeid=nodeid, nlookup=1)
    assert fs.inodes.refcount(nodeid) == 1
    fs.hook.virtiofsd_fuse_forget(req=fs.req(), nodeid=nodeid, nlookup=2**64 - 1)
    assert nodeid not in fs.inodes
    fs.hook.virtiofsd_fuse_forget(req=fs.req(), nodeid=nodeid, nlookup=5)  # no error, no reply
    again = fs.lookup(b"file")
    assert again.nodeid != nodeid and fs.inodes.refcount(again.nodeid) == 1


def test_forgetting_the_root_keeps_it(fs):
    fs.hook.virtiofsd_fuse_forget(req=fs.req(), nodeid=ROOT, nlookup=100)
    assert isinstance(fs.hook.virtiofsd_fuse_getattr(req=fs.req(), nodeid=ROOT, fh=None),
                      AttrReply)


def test_batch_forget(fs, shared):
    (shared / "a").touch()
    (shared / "b").touch()
    a = fs.lookup(b"a").nodeid
    b = fs.lookup(b"b").nodeid
    fs.lookup(b"b")
    fs.hook.virtiofsd_fuse_batch_forget(req=fs.req(), forgets=[(a, 1), (b, 1), (12345, 3)])
    assert a not in fs.inodes
    assert fs.inodes.refcount(b) == 1


def test_destroy_and_init_drop_everything_but_the_root(fs, shared, expect_errno):
    (shared / "file").touch()
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid).fh
    assert fs.hook.virtiofsd_fuse_destroy(req=fs.req()) is True
    with expect_errno(errno.EBADF):
        fs.hook.virtiofsd_fuse_getattr(req=fs.req(), nodeid=nodeid, fh=None)
    with expect_errno(errno.EBADF):
        fs.read(nodeid, fh, 1)
    assert fs.lookup(b"file").nodeid != nodeid
    assert fs.hook.virtiofsd_fuse_init(req=fs.req(), session=fs.session) is True
    assert len(fs.inodes) == 1
    assert fs.lookup(b".").nodeid == ROOT


def test_getattr_is_fresh(fs, shared):
    path = shared / "file"
    path.write_bytes(b"abc")
    nodeid = fs.lookup(b"file").nodeid
    path.write_bytes(b"abcdef")
    reply = fs.hook.virtiofsd_fuse_getattr(req=fs.req(), nodeid=nodeid, fh=None)
    assert reply.st.st_size == 6 and reply.timeout == 1.0


def _setattr(fs, nodeid, valid, fh=None, mode=0, uid=0, gid=0, size=0, atime_ns=0, mtime_ns=0):
    return fs.hook.virtiofsd_fuse_setattr(req=fs.req(), nodeid=nodeid, valid=valid, fh=fh,
                                          mode=mode, uid=uid, gid=gid, size=size,
                                          atime_ns=atime_ns, mtime_ns=mtime_ns)


def test_translated_attributes_differ_from_the_host_only_in_the_owner(make_fs, shared):
    path = shared / "file"
    path.write_bytes(b"hello")
    os.chown(path, 2005, 3007)
    os.utime(path, ns=(-1_500_000_001, 7_000_000_001))
    fs = make_fs(translate_uid=("map:1000:2000:10",), translate_gid=("map:1000:3000:10",))
    entry = fs.lookup(b"file")
    attr = fs.hook.virtiofsd_fuse_getattr(req=fs.req(), nodeid=entry.nodeid, fh=None)
    host = os.lstat(path)
    fields = ("st_ino", "st_size", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
              "st_mode", "st_nlink", "st_rdev", "st_blksize", "st_dev", "st_mtime")
    for st in (entry.st, attr.st):
        assert (st.st_uid, st.st_gid) == (1005, 1007)
        assert [getattr(st, name) for name in fields] == [getattr(host, name) for name in fields]
    seen = abi.ATTR_OUT.unpack(attr.encode())
    assert seen[3:5] == (host.st_ino, 5) and seen[14:16] == (1005, 1007)


def test_setattr_mode_owner_size_and_times_without_a_handle(fs, shared):
    path = shared / "file"
    path.write_bytes(b"0123456789")
    nodeid = fs.lookup(b"file").nodeid
    reply = _setattr(fs, nodeid, abi.FATTR_MODE, mode=stat.S_IFREG | 0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 == stat.S_IMODE(reply.st.st_mode)
    _setattr(fs, nodeid, abi.FATTR_UID | abi.FATTR_GID, uid=1234, gid=4321)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1234, 4321)
    _setattr(fs, nodeid, abi.FATTR_GID, gid=77)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1234, 77)
    reply = _setattr(fs, nodeid, abi.FATTR_SIZE, size=4)
    assert path.read_bytes() == b"0123" and reply.st.st_size == 4
    reply = _setattr(fs, nodeid, abi.FATTR_ATIME | abi.FATTR_MTIME,
                     atime_ns=1_500_000_000_123_456_789, mtime_ns=-5)
    assert os.stat(path).st_atime_ns == 1_500_000_000_123_456_789
    assert os.stat(path).st_mtime_ns == -5 == reply.st.st_mtime_ns


def test_setattr_time_now_and_omit(fs, shared):
    path = shared / "file"
    path.touch()
    os.utime(path, ns=(10, 20))
    nodeid = fs.lookup(b"file").nodeid
    _setattr(fs, nodeid, abi.FATTR_MTIME | abi.FATTR_MTIME_NOW)
    after = os.stat(path)
    assert after.st_atime_ns == 10  # omitted
    assert after.st_mtime_ns > 1_000_000_000 * 1_000_000_000


def test_setattr_through_a_handle(fs, shared):
    path = shared / "file"
    path.write_bytes(b"0123456789")
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_RDWR).fh
    valid = abi.FATTR_SIZE | abi.FATTR_MODE | abi.FATTR_MTIME | abi.FATTR_FH
    reply = _setattr(fs, nodeid, valid, fh=fh, size=2, mode=0o600, mtime_ns=7_000_000_001)
    assert path.read_bytes() == b"01"
    assert stat.S_IMODE(reply.st.st_mode) == 0o600 and reply.st.st_mtime_ns == 7_000_000_001


def test_setattr_on_a_symlink(fs, shared, expect_errno):
    (shared / "link").symlink_to("nowhere")
    nodeid = fs.lookup(b"link").nodeid
    _setattr(fs, nodeid, abi.FATTR_UID, uid=555)
    assert os.lstat(shared / "link").st_uid == 555
    _setattr(fs, nodeid, abi.FATTR_MTIME, mtime_ns=3_000_000_000)
    assert os.lstat(shared / "link").st_mtime_ns == 3_000_000_000
    with expect_errno(errno.EOPNOTSUPP):
        _setattr(fs, nodeid, abi.FATTR_MODE, mode=0o600)
    with expect_errno(errno.EBADF):  # never reopened for truncation
        _setattr(fs, nodeid, abi.FATTR_SIZE, size=0)


def test_setattr_size_of_a_fifo_is_refused_without_opening_it(fs, shared, expect_errno):
    os.mkfifo(shared / "fifo")
    nodeid = fs.lookup(b"fifo").nodeid
    with expect_errno(errno.EBADF):
        _setattr(fs, nodeid, abi.FATTR_SIZE | abi.FATTR_MODE, size=0, mode=0o600)
    assert stat.S_IMODE(os.stat(shared / "fifo").st_mode) != 0o600  # nothing changed


def test_setattr_size_out_of_range(fs, shared, expect_errno):
    (shared / "file").touch()
    nodeid = fs.lookup(b"file").nodeid
    with expect_errno(errno.EINVAL):
        _setattr(fs, nodeid, abi.FATTR_SIZE, size=2**64 - 1)


def test_readlink_returns_the_target_verbatim(fs, shared, expect_errno):
    (shared / "abs").symlink_to("/etc/passwd")
    (shared / "file").touch()
    assert fs.hook.virtiofsd_fuse_readlink(req=fs.req(),
                                           nodeid=fs.lookup(b"abs").nodeid) == b"/etc/passwd"
    with expect_errno(errno.ENOENT):
        fs.hook.virtiofsd_fuse_readlink(req=fs.req(), nodeid=fs.lookup(b"file").nodeid)


def _access(fs, nodeid, mask, uid=0, gid=0, groups=()):
    return fs.hook.virtiofsd_fuse_access(req=fs.req(uid, gid, groups), nodeid=nodeid, mask=mask)


def test_access_follows_posix_class_selection(fs, shared, expect_errno):
    path = shared / "file"
    path.touch()
    os.chown(path, 1000, 2000)
    os.chmod(path, 0o604)  # owner rw, group none, others r
    nodeid = fs.lookup(b"file").nodeid
    assert _access(fs, nodeid, os.R_OK | os.W_OK, uid=1000) == b""
    assert _access(fs, nodeid, os.R_OK, uid=3000, gid=3000) == b""
    with expect_errno(errno.EACCES):  # the group class has no bits, others' r does not count
        _access(fs, nodeid, os.R_OK, uid=3000, gid=2000)
    with expect_errno(errno.EACCES):
        _access(fs, nodeid, os.R_OK, uid=3000, gid=5, groups=(2000,))
    with expect_errno(errno.EACCES):
        _access(fs, nodeid, os.W_OK, uid=3000, gid=3000)
    assert _access(fs, nodeid, os.F_OK, uid=3000, gid=2000) == b""


def test_access_for_root(fs, shared, expect_errno):
    (shared / "file").touch()
    os.chmod(shared / "file", 0o000)
    (shared / "dir").mkdir(mode=0o000)
    nodeid = fs.lookup(b"file").nodeid
    assert _access(fs, nodeid, os.R_OK | os.W_OK) == b""
    with expect_errno(errno.EACCES):
        _access(fs, nodeid, os.X_OK)
    assert _access(fs, fs.lookup(b"dir").nodeid, os.X_OK) == b""
    os.chmod(shared / "file", 0o001)
    assert _access(fs, nodeid, os.X_OK) == b""


def test_statfs(fs, shared):
    reply = fs.hook.virtiofsd_fuse_statfs(req=fs.req(), nodeid=ROOT)
    assert isinstance(reply, StatfsReply)
    assert reply.st.f_blocks == os.statvfs(shared).f_blocks


def test_submount_is_announced_when_negotiated(make_fs, shared):
    mountpoint = shared / "mnt"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "none", str(mountpoint)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        announced = make_fs(session_flags=abi.InitFlag.SUBMOUNTS)
        assert announced.lookup(b"mnt").attr_flags == abi.ATTR_SUBMOUNT
        assert make_fs(session_flags=0).lookup(b"mnt").attr_flags == 0
        assert make_fs(session_flags=abi.InitFlag.SUBMOUNTS,
                       announce_submounts=False).lookup(b"mnt").attr_flags == 0
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_configure_without_an_inode_store_fails(shared):
    pm = make_plugin_manager(load_entry_points=False, plugins=[plugin])
    config = Config(shared_dir=str(shared), sandbox=Sandbox.NONE)
    with pytest.raises(ConfigError):
        pm.hook.virtiofsd_configure(config=config, pm=pm)
