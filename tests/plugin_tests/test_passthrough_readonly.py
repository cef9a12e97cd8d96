"""``--readonly``: the policy plugin answers EROFS to every operation that would change the
shared folder, and lets reads through."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from virtiofsd.fuse import abi

ROOT = 1


@pytest.fixture
def ro(make_fs, shared):
    (shared / "file").write_bytes(b"content")
    (shared / "sub").mkdir()
    return make_fs(readonly_policy=True)


def test_reads_pass(ro):
    nodeid = ro.lookup(b"file").nodeid
    fh = ro.open(nodeid, os.O_RDONLY).fh
    assert ro.read(nodeid, fh, 100) == b"content"
    assert ro.hook.virtiofsd_fuse_getattr(req=ro.req(), nodeid=nodeid, fh=None).st.st_size == 7
    dir_fh = ro.opendir()
    assert ro.hook.virtiofsd_fuse_readdir(req=ro.req(), nodeid=ROOT, fh=dir_fh, offset=0,
                                          size=4096)
    assert ro.hook.virtiofsd_fuse_access(req=ro.req(), nodeid=nodeid, mask=os.R_OK) == b""
    assert ro.hook.virtiofsd_fuse_fsync(req=ro.req(), nodeid=nodeid, fh=fh,
                                        datasync=False) == b""


def test_every_change_is_erofs(ro, shared, expect_errno):
    req = ro.req()
    file = ro.lookup(b"file").nodeid
    fh = ro.open(file, os.O_RDONLY).fh
    calls = [
        lambda: ro.hook.virtiofsd_fuse_setattr(req=req, nodeid=file, valid=abi.FATTR_MODE,
                                               fh=None, mode=0o777, uid=0, gid=0, size=0,
                                               atime_ns=0, mtime_ns=0),
        lambda: ro.hook.virtiofsd_fuse_mknod(req=req, parent=ROOT, name=b"n",
                                             mode=stat.S_IFIFO | 0o600, rdev=0, umask=0),
        lambda: ro.hook.virtiofsd_fuse_mkdir(req=req, parent=ROOT, name=b"d", mode=0o755,
                                             umask=0),
        lambda: ro.hook.virtiofsd_fuse_symlink(req=req, parent=ROOT, name=b"s", target=b"t"),
        lambda: ro.hook.virtiofsd_fuse_link(req=req, nodeid=file, newparent=ROOT,
                                            newname=b"l"),
        lambda: ro.hook.virtiofsd_fuse_unlink(req=req, parent=ROOT, name=b"file"),
        lambda: ro.hook.virtiofsd_fuse_rmdir(req=req, parent=ROOT, name=b"sub"),
        lambda: ro.hook.virtiofsd_fuse_rename(req=req, parent=ROOT, name=b"file",
                                              newparent=ROOT, newname=b"g", flags=0),
        lambda: ro.create(b"new"),
        lambda: ro.hook.virtiofsd_fuse_tmpfile(req=req, parent=ROOT, name=b"/", mode=0o600,
                                               flags=os.O_RDWR | os.O_TMPFILE, umask=0,
                                               open_flags=0),
        lambda: ro.write(file, fh, b"x"),
        lambda: ro.hook.virtiofsd_fuse_fallocate(req=req, nodeid=file, fh=fh, offset=0,
                                                 length=10, mode=0),
        lambda: ro.hook.virtiofsd_fuse_copy_file_range(req=req, nodeid=file, fh_in=fh,
                                                       off_in=0, nodeid_out=file, fh_out=fh,
                                                       off_out=0, length=1, flags=0),
        lambda: ro.hook.virtiofsd_fuse_setxattr(req=req, nodeid=file, name=b"user.x",
                                                value=b"v", flags=0, setxattr_flags=0),
        lambda: ro.hook.virtiofsd_fuse_removexattr(req=req, nodeid=file, name=b"user.x"),
        lambda: ro.hook.virtiofsd_fuse_access(req=req, nodeid=file, mask=os.W_OK),
    ]
    for call in calls:
        with expect_errno(errno.EROFS):
            call()
    assert sorted(os.listdir(shared)) == ["file", "sub"]
    assert (shared / "file").read_bytes() == b"content"
    assert stat.S_IMODE(os.stat(shared / "file").st_mode) != 0o777


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC])
def test_writing_opens_are_erofs(ro, shared, expect_errno, flags):
    with expect_errno(errno.EROFS):
        ro.open(ro.lookup(b"file").nodeid, flags)
    assert (shared / "file").read_bytes() == b"content"
    assert len(ro.state.handles) == 0


def test_writing_opendir_is_erofs(ro, expect_errno):
    with expect_errno(errno.EROFS):
        ro.hook.virtiofsd_fuse_opendir(req=ro.req(), nodeid=ROOT, flags=os.O_RDWR)
