"""Passthrough open files: OPEN, CREATE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK,
COPY_FILE_RANGE, SYNCFS."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading

import pytest

from virtiofsd.config import CacheMode
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import CreateReply, LseekReply, OpenReply, WriteReply
from virtiofsd.sys import ffi

ROOT = 1


def _fd_flags(fs, nodeid, fh):
    """The flags of the host descriptor behind a handle."""
    return fcntl.fcntl(fs.state.handles.get(fh, nodeid).fd, fcntl.F_GETFL)


def test_open_read_write_release(fs, shared, expect_errno):
    (shared / "file").write_bytes(b"0123456789")
    nodeid = fs.lookup(b"file").nodeid
    reply = fs.open(nodeid, os.O_RDWR)
    assert isinstance(reply, OpenReply) and reply.open_flags == 0  # cache=auto
    assert fs.read(nodeid, reply.fh, 4, offset=3) == b"3456"
    assert fs.read(nodeid, reply.fh, 100, offset=0, parts=3) == b"0123456789"
    assert fs.read(nodeid, reply.fh, 10, offset=50) == b""
    assert fs.write(nodeid, reply.fh, b"AB", offset=8) == 2
    assert (shared / "file").read_bytes() == b"01234567AB"
    assert fs.hook.virtiofsd_fuse_flush(req=fs.req(), nodeid=nodeid, fh=reply.fh,
                                        lock_owner=0) == b""
    assert fs.hook.virtiofsd_fuse_fsync(req=fs.req(), nodeid=nodeid, fh=reply.fh,
                                        datasync=True) == b""
    assert fs.hook.virtiofsd_fuse_release(req=fs.req(), nodeid=nodeid, fh=reply.fh, flags=0,
                                          release_flags=0, lock_owner=0) == b""
    with expect_errno(errno.EBADF):
        fs.read(nodeid, reply.fh, 1)


def test_scatter_write(fs, shared):
    (shared / "file").touch()
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_WRONLY).fh
    data = [memoryview(b"abc"), memoryview(bytearray(b"def"))]
    assert fs.hook.virtiofsd_fuse_write(req=fs.req(), nodeid=nodeid, fh=fh, offset=0, size=6,
                                        write_flags=0, flags=os.O_WRONLY, data=data) == 6
    assert (shared / "file").read_bytes() == b"abcdef"


def test_open_of_special_files_is_refused(fs, shared, expect_errno):
    os.mkfifo(shared / "fifo")
    os.mknod(shared / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (shared / "link").symlink_to("/etc/passwd")
    for name in (b"fifo", b"null", b"link"):
        nodeid = fs.lookup(name).nodeid
        with expect_errno(errno.EBADF):  # the FIFO would block this thread if it were opened
            fs.open(nodeid, os.O_RDONLY)
        with expect_errno(errno.EBADF):
            fs.hook.virtiofsd_fuse_syncfs(req=fs.req(), nodeid=nodeid)
    assert len(fs.state.handles) == 0


@pytest.mark.parametrize("flags", [os.O_RDONLY | os.O_CREAT, os.O_RDWR | os.O_TMPFILE])
def test_open_refuses_creation_flags(fs, shared, expect_errno, flags):
    (shared / "file").touch()
    with expect_errno(errno.EINVAL):
        fs.open(fs.lookup(b"file").nodeid, flags)


def test_open_flag_cleanup(make_fs, shared):
    (shared / "file").write_bytes(b"x")
    fs = make_fs()
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_WRONLY | os.O_APPEND | os.O_NOATIME | os.O_DIRECT).fh
    host = _fd_flags(fs, nodeid, fh)
    assert host & os.O_ACCMODE == os.O_WRONLY
    assert not host & (os.O_APPEND | os.O_NOATIME | os.O_DIRECT)

    keeping = make_fs(preserve_noatime=True, allow_direct_io=True,
                      session_flags=abi.InitFlag.WRITEBACK_CACHE)
    nodeid = keeping.lookup(b"file").nodeid
    fh = keeping.open(nodeid, os.O_WRONLY | os.O_NOATIME | os.O_DIRECT).fh
    host = _fd_flags(keeping, nodeid, fh)
    assert host & os.O_ACCMODE == os.O_RDWR  # write-back cache reads write-only files
    assert host & os.O_NOATIME and host & os.O_DIRECT


def test_open_truncates_with_o_trunc(fs, shared):
    (shared / "file").write_bytes(b"data")
    fs.open(fs.lookup(b"file").nodeid, os.O_WRONLY | os.O_TRUNC)
    assert (shared / "file").read_bytes() == b""


def test_open_reply_flags_follow_the_cache_mode(make_fs, shared):
    (shared / "file").touch()
    expected = {
        CacheMode.AUTO: 0,
        CacheMode.NEVER: abi.FOPEN_DIRECT_IO,
        CacheMode.METADATA: abi.FOPEN_DIRECT_IO,
        CacheMode.ALWAYS: abi.FOPEN_KEEP_CACHE,
    }
    for mode, flags in expected.items():
        fs = make_fs(cache=mode)
        assert fs.open(fs.lookup(b"file").nodeid).open_flags == flags, mode
        assert fs.create(b"new-" + mode.value.encode()).open.open_flags == flags, mode
        fs.close()


def test_append_is_applied_per_write(fs, shared):
    (shared / "file").write_bytes(b"start")
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_WRONLY | os.O_APPEND).fh
    fs.write(nodeid, fh, b"+end", offset=0, flags=os.O_WRONLY | os.O_APPEND)
    assert (shared / "file").read_bytes() == b"start+end"
    # A cached (write-back or mmap) write lands where the guest put it.
    fs.write(nodeid, fh, b"S", offset=0, flags=os.O_WRONLY | os.O_APPEND,
             write_flags=abi.WRITE_CACHE)
    assert (shared / "file").read_bytes() == b"Start+end"


def test_read_and_write_refuse_other_nodes_handles(fs, shared, expect_errno):
    (shared / "a").write_bytes(b"a")
    (shared / "b").write_bytes(b"b")
    a = fs.lookup(b"a").nodeid
    b = fs.lookup(b"b").nodeid
    fh = fs.open(a).fh
    with expect_errno(errno.EBADF):
        fs.read(b, fh, 1)
    with expect_errno(errno.EINVAL):
        fs.read(a, fh, 1, offset=2**64 - 1)


def test_create_new_file(fs, shared):
    reply = fs.create(b"new", flags=os.O_RDWR | os.O_APPEND, mode=0o640)
    assert isinstance(reply, CreateReply)
    host = os.stat(shared / "new")
    assert stat.S_IMODE(host.st_mode) == 0o640
    assert reply.entry.st.st_ino == host.st_ino
    assert fs.inodes.refcount(reply.entry.nodeid) == 1
    assert fs.lookup(b"new").nodeid == reply.entry.nodeid
    nodeid, fh = reply.entry.nodeid, reply.open.fh
    assert not _fd_flags(fs, nodeid, fh) & os.O_APPEND
    fs.write(nodeid, fh, b"hi", offset=0)
    assert fs.read(nodeid, fh, 10) == b"hi"


def test_create_existing_file(fs, shared, expect_errno):
    (shared / "file").write_bytes(b"keep")
    with expect_errno(errno.EEXIST):
        fs.create(b"file", flags=os.O_RDWR | os.O_EXCL)
    reply = fs.create(b"file", flags=os.O_RDWR)
    assert reply.entry.nodeid == fs.lookup(b"file").nodeid
    assert fs.read(reply.entry.nodeid, reply.open.fh, 10) == b"keep"
    fs.create(b"file", flags=os.O_RDWR | os.O_TRUNC)
    assert (shared / "file").read_bytes() == b""


def test_create_over_a_fifo_does_not_open_it(fs, shared, expect_errno):
    os.mkfifo(shared / "fifo")
    with expect_errno(errno.EBADF):
        fs.create(b"fifo", flags=os.O_RDONLY)
    assert len(fs.inodes) == 1  # the lookup made for the refused open was taken back


def test_create_does_not_follow_a_symlink(fs, shared, tmp_path, expect_errno):
    outside = tmp_path / "outside"
    (shared / "link").symlink_to(outside)
    with expect_errno(errno.EBADF):
        fs.create(b"link", flags=os.O_RDWR)
    assert not outside.exists()


def test_fallocate_and_lseek_data_hole(fs, shared):
    (shared / "file").touch()
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_RDWR).fh
    assert fs.hook.virtiofsd_fuse_fallocate(req=fs.req(), nodeid=nodeid, fh=fh, offset=0,
                                            length=1 << 20, mode=0) == b""
    assert os.stat(shared / "file").st_size == 1 << 20
    fs.write(nodeid, fh, b"x" * 4096, offset=0)
    fs.write(nodeid, fh, b"y" * 4096, offset=(1 << 20) - 4096)
    try:
        fs.hook.virtiofsd_fuse_fallocate(
            req=fs.req(), nodeid=nodeid, fh=fh, offset=65536, length=65536,
            mode=ffi.FALLOC_FL_PUNCH_HOLE | ffi.FALLOC_FL_KEEP_SIZE)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            pytest.skip("no hole punching on this file system")
        raise
    hole = fs.hook.virtiofsd_fuse_lseek(req=fs.req(), nodeid=nodeid, fh=fh, offset=4096,
                                        whence=os.SEEK_HOLE)
    assert isinstance(hole, LseekReply) and 4096 <= hole.offset <= 65536
    data = fs.hook.virtiofsd_fuse_lseek(req=fs.req(), nodeid=nodeid, fh=fh, offset=65536,
                                        whence=os.SEEK_DATA)
    assert 65536 < data.offset <= (1 << 20) - 4096
    assert os.stat(shared / "file").st_size == 1 << 20


def test_copy_file_range(fs, shared, expect_errno):
    (shared / "src").write_bytes(b"0123456789")
    (shared / "dst").write_bytes(b"..........")
    src = fs.lookup(b"src").nodeid
    dst = fs.lookup(b"dst").nodeid
    fh_in = fs.open(src).fh
    fh_out = fs.open(dst, os.O_WRONLY).fh
    reply = fs.hook.virtiofsd_fuse_copy_file_range(req=fs.req(), nodeid=src, fh_in=fh_in,
                                                   off_in=2, nodeid_out=dst, fh_out=fh_out,
                                                   off_out=5, length=4, flags=0)
    assert isinstance(reply, WriteReply) and reply.size == 4
    assert (shared / "dst").read_bytes() == b".....2345."
    with expect_errno(errno.EINVAL):
        fs.hook.virtiofsd_fuse_copy_file_range(req=fs.req(), nodeid=src, fh_in=fh_in, off_in=0,
                                               nodeid_out=dst, fh_out=fh_out, off_out=0,
                                               length=1, flags=1)


def test_syncfs_of_the_root(fs):
    assert fs.hook.virtiofsd_fuse_syncfs(req=fs.req(), nodeid=ROOT) == b""


def test_release_keeps_the_descriptor_for_a_running_operation(fs, shared):
    (shared / "file").write_bytes(b"abc")
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid).fh
    handle = fs.state.handles.get(fh, nodeid)
    fs.hook.virtiofsd_fuse_release(req=fs.req(), nodeid=nodeid, fh=fh, flags=0,
                                   release_flags=0, lock_owner=0)
    assert os.pread(handle.fd, 3, 0) == b"abc"  # still ours while referenced
    fd = handle.fd
    del handle
    with pytest.raises(OSError):
        os.fstat(fd)


def test_concurrent_reads_and_writes(fs, shared):
    (shared / "file").write_bytes(bytes(4096 * 8))
    nodeid = fs.lookup(b"file").nodeid
    fh = fs.open(nodeid, os.O_RDWR).fh
    errors = []

    def worker(index):
        try:
            for _ in range(50):
                fs.write(nodeid, fh, bytes([index]) * 4096, offset=index * 4096)
                assert fs.read(nodeid, fh, 4096, offset=index * 4096) == bytes([index]) * 4096
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
