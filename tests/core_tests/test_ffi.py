"""The cffi bindings of virtiofsd.sys.ffi and the linux_dirent64 parser."""

from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from virtiofsd.sys import ffi
from virtiofsd.sys.dirents64 import parse_dirents64


def test_getdents64_lists_a_folder(tmp_path):
    for name in ("a", "bb", "ccc"):
        (tmp_path / name).touch()
    (tmp_path / "dir").mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = []
        buffer = bytearray(4096)
        while records := ffi.getdents64(fd, buffer):
            entries.extend(parse_dirents64(records))
    finally:
        os.close(fd)
    by_name = {name: (ino, dtype) for ino, _offset, dtype, name in entries}
    assert set(by_name) == {b".", b"..", b"a", b"bb", b"ccc", b"dir"}
    assert by_name[b"a"] == (os.stat(tmp_path / "a").st_ino, stat.S_IFREG >> 12)
    assert by_name[b"dir"][1] == stat.S_IFDIR >> 12


def test_getdents64_resumes_at_an_offset(tmp_path):
    for index in range(30):
        (tmp_path / f"n{index}").touch()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        everything = list(parse_dirents64(ffi.getdents64(fd, bytearray(65536))))
        _ino, tenth_offset, _dtype, _name = everything[9]
        os.lseek(fd, tenth_offset, os.SEEK_SET)
        rest = list(parse_dirents64(ffi.getdents64(fd, bytearray(65536))))
    finally:
        os.close(fd)
    assert rest == everything[10:]


def test_errors_carry_errno_and_the_call(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            ffi.renameat2(fd, b"missing", fd, b"other", 0)
        assert info.value.errno == errno.ENOENT
        assert "renameat2" in str(info.value) and "missing" in str(info.value)
        with pytest.raises(OSError) as info:
            ffi.getdents64(fd, bytearray(1024))  # O_PATH cannot be read
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            ffi.syncfs(fd)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_renameat2_exchange(tmp_path):
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        ffi.renameat2(fd, b"a", fd, b"b", ffi.RENAME_EXCHANGE)
        with pytest.raises(FileExistsError):
            ffi.renameat2(fd, b"a", fd, b"b", ffi.RENAME_NOREPLACE)
    finally:
        os.close(fd)
    assert (tmp_path / "a").read_bytes() == b"B"


def test_fchownat_empty_path_on_o_path_descriptor(tmp_path):
    (tmp_path / "link").symlink_to("nowhere")
    fd = os.open(tmp_path / "link", os.O_PATH | os.O_NOFOLLOW)
    try:
        ffi.fchownat(fd, b"", 321, ffi.UNCHANGED, ffi.AT_EMPTY_PATH | ffi.AT_SYMLINK_NOFOLLOW)
    finally:
        os.close(fd)
    host = os.lstat(tmp_path / "link")
    assert host.st_uid == 321 and host.st_gid == 0


def test_utimensat_now_and_omit(tmp_path):
    path = tmp_path / "file"
    path.touch()
    os.utime(path, ns=(5, 6))
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        ffi.utimensat(fd, b"file", (0, ffi.UTIME_OMIT), (12, 34))
        assert (os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns) == (5, 12_000_000_034)
        ffi.utimensat(fd, b"file", (0, ffi.UTIME_NOW), (0, ffi.UTIME_OMIT))
        assert os.stat(path).st_atime_ns > 10**18
    finally:
        os.close(fd)
    file_fd = os.open(path, os.O_RDONLY)
    try:
        ffi.futimens(file_fd, (1, 2), (3, 4))
    finally:
        os.close(file_fd)
    assert (os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns) == (1_000_000_002,
                                                                      3_000_000_004)


def test_fallocate_keep_size(tmp_path):
    path = tmp_path / "file"
    path.touch()
    fd = os.open(path, os.O_RDWR)
    try:
        ffi.fallocate(fd, ffi.FALLOC_FL_KEEP_SIZE, 0, 65536)
        assert os.fstat(fd).st_size == 0
        ffi.fallocate(fd, 0, 0, 4096)
        assert os.fstat(fd).st_size == 4096
        with pytest.raises(OSError) as info:
            ffi.fallocate(fd, 0, -1, 10)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_syncfs(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ffi.syncfs(fd)
    finally:
        os.close(fd)


def _record(ino, offset, dtype, name, reclen=None):
    size = reclen or (19 + len(name) + 1 + 7) // 8 * 8
    body = struct.pack("=QqHB", ino, offset, size, dtype) + name + b"\0"
    return body + bytes(size - len(body)) if size >= len(body) else body[:size]


def test_parse_dirents64_records():
    data = _record(1, 10, 4, b".") + _record(2, 20, 8, b"name") + _record(3, -1, 10, b"x" * 255)
    assert list(parse_dirents64(data)) == [
        (1, 10, 4, b"."), (2, 20, 8, b"name"), (3, -1, 10, b"x" * 255)]
    assert list(parse_dirents64(b"")) == []


def test_parse_dirents64_ends_names_at_the_first_nul():
    """The kernel writes a name and its NUL but leaves the padding after it as the buffer held
    it, so what follows the NUL may be the remains of an earlier, longer name."""
    stale = bytearray(_record(7, 70, 8, b"abcdefghijklmnopqrstu"))
    stale[:19 + 5] = _record(7, 70, 8, b"abcd", reclen=len(stale))[:19 + 5]
    without_nul = struct.pack("=QqHB", 8, 80, 24, 8) + b"wxyzv"
    assert list(parse_dirents64(bytes(stale) + without_nul)) == [
        (7, 70, 8, b"abcd"), (8, 80, 8, b"wxyzv")]


@pytest.mark.parametrize("data", [
    _record(1, 1, 8, b"name")[:10],  # truncated header
    _record(1, 1, 8, b"name", reclen=19),  # a length without room for a name
    _record(1, 1, 8, b"name", reclen=4096)[:40],  # a length past the end
    struct.pack("=QqHB", 1, 1, 0, 8) + bytes(13),  # zero length would loop forever
])
def test_parse_dirents64_refuses_impossible_records(data):
    with pytest.raises(ValueError):
        list(parse_dirents64(data))


#: Every field of an ``os.stat_result`` on Linux, read by name.
_STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
                "st_blksize", "st_blocks", "st_rdev")


def _by_name(st):
    return {name: getattr(st, name) for name in _STAT_FIELDS}


@pytest.mark.parametrize("path", ["file", "/dev/null"])
def test_statx_reads_as_the_stat_of_the_inode_and_reports_its_mount_id(tmp_path, path):
    (tmp_path / "file").write_bytes(b"12345")
    os.utime(tmp_path / "file", ns=(-1_500_000_000, 7_000_000_001))  # one time before 1970
    fd = os.open(tmp_path / path, os.O_PATH)
    try:
        result = ffi.statx(fd, b"", ffi.AT_EMPTY_PATH | ffi.AT_SYMLINK_NOFOLLOW)
        assert _by_name(result) == _by_name(os.stat(fd))
        _, mount_id = ffi.name_to_handle_at(fd, b"", ffi.AT_EMPTY_PATH)
        assert result.mnt_id == mount_id > 0
    finally:
        os.close(fd)


def test_a_file_handle_reopens_a_file_after_rename_and_unlink(tmp_path):
    (tmp_path / "f").write_bytes(b"payload")
    folder = os.open(tmp_path, os.O_PATH)
    file = os.open(tmp_path / "f", os.O_PATH)
    try:
        handle, _ = ffi.name_to_handle_at(folder, b"f", 0)
        assert handle == ffi.name_to_handle_at(file, b"", ffi.AT_EMPTY_PATH)[0]
    finally:
        os.close(folder)
        os.close(file)
    os.rename(tmp_path / "f", tmp_path / "g")
    mount_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    keep = ffi.open_by_handle_at(mount_fd, handle, os.O_RDONLY)
    try:
        assert os.read(keep, 100) == b"payload"
        os.unlink(tmp_path / "g")
        with pytest.raises(OSError) as info:
            # The inode is still open here, so the handle still opens it.
            os.close(ffi.open_by_handle_at(mount_fd, handle, os.O_PATH))
            os.close(keep)
            keep = -1
            ffi.open_by_handle_at(mount_fd, handle, os.O_PATH)
        assert info.value.errno == errno.ESTALE
    finally:
        if keep >= 0:
            os.close(keep)
        os.close(mount_fd)


def test_file_handle_errors_surface_as_oserror(tmp_path):
    proc = os.open("/proc", os.O_PATH)
    try:
        with pytest.raises(OSError) as info:
            ffi.name_to_handle_at(proc, b"", ffi.AT_EMPTY_PATH)
        assert info.value.errno == errno.EOPNOTSUPP
        assert "name_to_handle_at" in str(info.value)
    finally:
        os.close(proc)
    path_fd = os.open(tmp_path, os.O_PATH)
    try:
        handle, _ = ffi.name_to_handle_at(path_fd, b"", ffi.AT_EMPTY_PATH)
        with pytest.raises(OSError) as info:
            ffi.open_by_handle_at(path_fd, handle, os.O_PATH)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(path_fd)
