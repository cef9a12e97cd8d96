"""Passthrough creation, removal, renaming and folder reading: MKDIR, MKNOD, SYMLINK, LINK,
UNLINK, RMDIR, RENAME, OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from virtiofsd.config import CacheMode
from virtiofsd.fuse import abi
from virtiofsd.sys import ffi

ROOT = 1


def parse_readdir(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(ino, offset, type, name) of each fuse_dirent record."""
    records, position = [], 0
    while position < len(data):
        ino, offset, namelen, dtype = abi.DIRENT.unpack_from(data, position)
        start = position + abi.DIRENT.size
        records.append((ino, offset, dtype, data[start:start + namelen]))
        position += abi.dirent_size(namelen)
    return records


def parse_readdirplus(data: bytes) -> list[tuple[int, bytes, int]]:
    """(nodeid, name, offset) of each fuse_direntplus record."""
    records, position = [], 0
    while position < len(data):
        nodeid = abi.ENTRY_OUT.unpack_from(data, position)[0]
        _ino, offset, namelen, _dtype = abi.DIRENT.unpack_from(data, position + abi.ENTRY_OUT.size)
        start = position + abi.ENTRY_OUT.size + abi.DIRENT.size
        records.append((nodeid, data[start:start + namelen], offset))
        position += abi.direntplus_size(namelen)
    return records


def _mkdir(fs, name, mode=0o755, parent=ROOT, req=None):
    return fs.hook.virtiofsd_fuse_mkdir(req=req or fs.req(), parent=parent, name=name, mode=mode,
                                        umask=0o022)


def test_mkdir_creates_and_counts_a_lookup(fs, shared):
    entry = _mkdir(fs, b"sub", mode=0o750)
    assert stat.S_IMODE(os.stat(shared / "sub").st_mode) == 0o750  # no host umask applied
    assert stat.S_ISDIR(entry.st.st_mode)
    assert fs.inodes.refcount(entry.nodeid) == 1
    assert fs.lookup(b"sub").nodeid == entry.nodeid


def test_mkdir_of_an_existing_name_is_eexist(fs, shared, expect_errno):
    (shared / "sub").mkdir()
    with expect_errno(errno.EEXIST):
        _mkdir(fs, b"sub")


@pytest.mark.parametrize("name, code", [
    (b".", errno.EINVAL), (b"..", errno.EINVAL), (b"a/b", errno.EINVAL),
    (b"x\0y", errno.EINVAL), (b"", errno.ENOENT),
])
def test_creation_refuses_hostile_names(fs, shared, expect_errno, name, code):
    (shared / "a").mkdir()
    with expect_errno(code):
        _mkdir(fs, name)
    with expect_errno(code):
        fs.create(name)
    with expect_errno(code):
        fs.hook.virtiofsd_fuse_symlink(req=fs.req(), parent=ROOT, name=name, target=b"t")
    with expect_errno(code):
        fs.hook.virtiofsd_fuse_unlink(req=fs.req(), parent=ROOT, name=name)
    with expect_errno(code):
        fs.hook.virtiofsd_fuse_rename(req=fs.req(), parent=ROOT, name=b"a", newparent=ROOT,
                                      newname=name, flags=0)
    assert sorted(os.listdir(shared)) == ["a"]


def test_mknod_fifo_and_device(fs, shared):
    fifo = fs.hook.virtiofsd_fuse_mknod(req=fs.req(), parent=ROOT, name=b"fifo",
                                        mode=stat.S_IFIFO | 0o600, rdev=0, umask=0)
    assert stat.S_ISFIFO(os.lstat(shared / "fifo").st_mode) and stat.S_ISFIFO(fifo.st.st_mode)
    # /dev/null is 1:3; the guest sends new_encode_dev(1, 3) = 0x103.
    device = fs.hook.virtiofsd_fuse_mknod(req=fs.req(), parent=ROOT, name=b"null",
                                          mode=stat.S_IFCHR | 0o666, rdev=0x103, umask=0)
    host = os.lstat(shared / "null")
    assert stat.S_ISCHR(host.st_mode) and (os.major(host.st_rdev), os.minor(host.st_rdev)) == (1, 3)
    assert device.st.st_rdev == host.st_rdev
    big = fs.hook.virtiofsd_fuse_mknod(req=fs.req(), parent=ROOT, name=b"big",
                                       mode=stat.S_IFCHR | 0o600,
                                       rdev=(0x345 << 20) | (0xABC << 8) | 0x12, umask=0)
    rdev = os.lstat(shared / "big").st_rdev
    assert (os.major(rdev), os.minor(rdev)) == (0xABC, 0x34512) and big.nodeid > ROOT


def test_symlink_target_is_stored_verbatim(fs, shared):
    entry = fs.hook.virtiofsd_fuse_symlink(req=fs.req(), parent=ROOT, name=b"abs",
                                           target=b"/etc/shadow")
    assert os.readlink(shared / "abs") == "/etc/shadow"
    assert stat.S_ISLNK(entry.st.st_mode)
    fs.hook.virtiofsd_fuse_symlink(req=fs.req(), parent=ROOT, name=b"up",
                                   target=b"../../outside")
    assert os.readlink(shared / "up") == "../../outside"


def test_symlink_target_with_nul_is_einval(fs, expect_errno):
    with expect_errno(errno.EINVAL):
        fs.hook.virtiofsd_fuse_symlink(req=fs.req(), parent=ROOT, name=b"l", target=b"a\0b")


def test_link_gives_the_same_node(fs, shared):
    (shared / "file").write_bytes(b"x")
    (shared / "sub").mkdir()
    file = fs.lookup(b"file")
    sub = fs.lookup(b"sub")
    entry = fs.hook.virtiofsd_fuse_link(req=fs.req(), nodeid=file.nodeid, newparent=sub.nodeid,
                                        newname=b"again")
    assert entry.nodeid == file.nodeid and entry.st.st_nlink == 2
    assert fs.inodes.refcount(file.nodeid) == 2
    assert os.stat(shared / "sub" / "again").st_ino == os.stat(shared / "file").st_ino


def test_link_of_a_symlink_links_the_symlink(fs, shared):
    (shared / "link").symlink_to("/nowhere")
    node = fs.lookup(b"link").nodeid
    fs.hook.virtiofsd_fuse_link(req=fs.req(), nodeid=node, newparent=ROOT, newname=b"link2")
    assert os.readlink(shared / "link2") == "/nowhere"


def test_unlink_and_rmdir(fs, shared, expect_errno):
    (shared / "file").touch()
    (shared / "sub").mkdir()
    with expect_errno(errno.EISDIR):
        fs.hook.virtiofsd_fuse_unlink(req=fs.req(), parent=ROOT, name=b"sub")
    with expect_errno(errno.ENOTDIR):
        fs.hook.virtiofsd_fuse_rmdir(req=fs.req(), parent=ROOT, name=b"file")
    assert fs.hook.virtiofsd_fuse_unlink(req=fs.req(), parent=ROOT, name=b"file") == b""
    assert fs.hook.virtiofsd_fuse_rmdir(req=fs.req(), parent=ROOT, name=b"sub") == b""
    assert os.listdir(shared) == []


def test_rename_with_flags(fs, shared, expect_errno):
    (shared / "a").write_bytes(b"A")
    (shared / "b").write_bytes(b"B")
    (shared / "sub").mkdir()
    sub = fs.lookup(b"sub").nodeid

    def rename(name, newparent, newname, flags):
        return fs.hook.virtiofsd_fuse_rename(req=fs.req(), parent=ROOT, name=name,
                                             newparent=newparent, newname=newname, flags=flags)

    with expect_errno(errno.EEXIST):
        rename(b"a", ROOT, b"b", ffi.RENAME_NOREPLACE)
    assert rename(b"a", ROOT, b"b", ffi.RENAME_EXCHANGE) == b""
    assert (shared / "a").read_bytes() == b"B" and (shared / "b").read_bytes() == b"A"
    rename(b"a", sub, b"moved", 0)
    assert (shared / "sub" / "moved").read_bytes() == b"B" and not (shared / "a").exists()


def test_readdir_lists_everything_and_resumes_at_offsets(fs, shared):
    names = {f"entry-{index:03d}".encode() for index in range(60)}
    for name in names:
        (shared / name.decode()).touch()
    fh = fs.opendir()
    seen, offset, calls = [], 0, 0
    while True:
        data = fs.hook.virtiofsd_fuse_readdir(req=fs.req(), nodeid=ROOT, fh=fh, offset=offset,
                                              size=512)
        if not data:
            break
        assert len(data) <= 512
        records = parse_readdir(data)
        seen.extend(record[3] for record in records)
        offset = records[-1][1]
        calls += 1
    assert calls > 1
    assert sorted(seen) == sorted(names | {b".", b".."})
    by_name = {record[3]: record for record in parse_readdir(
        fs.hook.virtiofsd_fuse_readdir(req=fs.req(), nodeid=ROOT, fh=fh, offset=0, size=65536))}
    assert by_name[b"entry-000"][0] == os.stat(shared / "entry-000").st_ino
    assert by_name[b"entry-000"][2] == stat.S_IFREG >> 12
    assert fs.hook.virtiofsd_fuse_readdir(req=fs.req(), nodeid=ROOT, fh=fh, offset=0,
                                          size=0) == b""
    assert fs.hook.virtiofsd_fuse_releasedir(req=fs.req(), nodeid=ROOT, fh=fh) == b""


def test_readdir_with_a_bad_handle_or_offset(fs, shared, expect_errno):
    (shared / "sub").mkdir()
    sub = fs.lookup(b"sub").nodeid
    fh = fs.opendir()
    with expect_errno(errno.EBADF):  # a handle of another node
        fs.hook.virtiofsd_fuse_readdir(req=fs.req(), nodeid=sub, fh=fh, offset=0, size=4096)
    with expect_errno(errno.EBADF):
        fs.hook.virtiofsd_fuse_readdir(req=fs.req(), nodeid=ROOT, fh=999, offset=0, size=4096)
    with expect_errno(errno.EINVAL):
        fs.hook.virtiofsd_fuse_readdir(req=fs.req(), nodeid=ROOT, fh=fh, offset=2**64 - 1,
                                       size=4096)


def test_readdirplus_looks_up_entries_but_not_dots(fs, shared):
    (shared / "file").touch()
    (shared / "sub").mkdir()
    fh = fs.opendir()
    data = fs.hook.virtiofsd_fuse_readdirplus(req=fs.req(), nodeid=ROOT, fh=fh, offset=0,
                                              size=65536)
    records = {name: nodeid for nodeid, name, _offset in parse_readdirplus(data)}
    assert records[b"."] == 0 and records[b".."] == 0
    assert records[b"file"] == fs.lookup(b"file").nodeid
    assert fs.inodes.refcount(records[b"file"]) == 2  # readdirplus + lookup
    assert fs.inodes.refcount(records[b"sub"]) == 1


def test_readdirplus_counts_lookups_only_for_the_entries_it_sends(fs, shared):
    for index in range(20):
        (shared / f"f{index:02d}").touch()
    fh = fs.opendir()
    size = 3 * abi.direntplus_size(3)  # room for three entries, whatever they are
    data = fs.hook.virtiofsd_fuse_readdirplus(req=fs.req(), nodeid=ROOT, fh=fh, offset=0,
                                              size=size)
    records = parse_readdirplus(data)
    assert len(records) == 3
    counted = {nodeid for nodeid, _name, _offset in records if nodeid}
    assert {node for node in range(2, 100) if node in fs.inodes} == counted
    assert all(fs.inodes.refcount(node) == 1 for node in counted)


def test_readdirplus_continues_at_the_offset(fs, shared):
    for index in range(10):
        (shared / f"f{index}").touch()
    fh = fs.opendir()
    names, offset = [], 0
    while True:
        data = fs.hook.virtiofsd_fuse_readdirplus(req=fs.req(), nodeid=ROOT, fh=fh,
                                                  offset=offset, size=400)
        if not data:
            break
        records = parse_readdirplus(data)
        names.extend(name for _nodeid, name, _offset in records)
        offset = records[-1][2]
    assert sorted(names) == sorted([f"f{index}".encode() for index in range(10)] + [b".", b".."])


@pytest.mark.parametrize("plus", [False, True], ids=["readdir", "readdirplus"])
@pytest.mark.parametrize("size", [512, 4096])
def test_pages_list_every_name_length_once_in_host_order(fs, shared, plus, size):
    """Names of every length up to NAME_MAX, read page by page from the offsets the replies
    gave: each name comes once, in the order getdents64 gives them, with the host's d_type."""
    for length in range(1, 256):
        (shared / ("f" * length)).touch()
    (shared / "d").mkdir()
    read = fs.hook.virtiofsd_fuse_readdirplus if plus else fs.hook.virtiofsd_fuse_readdir
    fh = fs.opendir()
    listed, offset = [], 0
    while data := read(req=fs.req(), nodeid=ROOT, fh=fh, offset=offset, size=size):
        assert len(data) <= size
        if plus:
            records = [(name, after) for _node, name, after in parse_readdirplus(data)]
        else:
            records = [(name, after) for _ino, after, _type, name in parse_readdir(data)]
        listed.extend(name for name, _after in records)
        offset = records[-1][1]
    host_order = [name.encode() for name in os.listdir(shared)]
    assert [name for name in listed if name not in (b".", b"..")] == host_order
    assert sorted(listed) == sorted(host_order + [b".", b".."])
    types = {record[3]: record[2] for record in parse_readdir(fs.hook.virtiofsd_fuse_readdir(
        req=fs.req(), nodeid=ROOT, fh=fh, offset=0, size=65536))}
    assert types[b"d"] == stat.S_IFDIR >> 12 and types[b"f" * 255] == stat.S_IFREG >> 12


def test_opendir_reply_flags_follow_the_cache_mode(make_fs):
    expected = {
        CacheMode.AUTO: 0,
        CacheMode.NEVER: 0,
        CacheMode.METADATA: abi.FOPEN_CACHE_DIR | abi.FOPEN_KEEP_CACHE,
        CacheMode.ALWAYS: abi.FOPEN_CACHE_DIR | abi.FOPEN_KEEP_CACHE,
    }
    for mode, flags in expected.items():
        fs = make_fs(cache=mode)
        reply = fs.hook.virtiofsd_fuse_opendir(req=fs.req(), nodeid=ROOT, flags=os.O_RDONLY)
        assert reply.open_flags == flags, mode
        fs.close()


def test_opendir_of_a_file_is_enotdir(fs, shared, expect_errno):
    (shared / "file").touch()
    with expect_errno(errno.ENOTDIR):
        fs.hook.virtiofsd_fuse_opendir(req=fs.req(), nodeid=fs.lookup(b"file").nodeid,
                                       flags=os.O_RDONLY)


def test_fsyncdir_and_releasedir(fs, expect_errno):
    fh = fs.opendir()
    assert fs.hook.virtiofsd_fuse_fsyncdir(req=fs.req(), nodeid=ROOT, fh=fh,
                                           datasync=False) == b""
    assert fs.hook.virtiofsd_fuse_fsyncdir(req=fs.req(), nodeid=ROOT, fh=fh,
                                           datasync=True) == b""
    fs.hook.virtiofsd_fuse_releasedir(req=fs.req(), nodeid=ROOT, fh=fh)
    with expect_errno(errno.EBADF):
        fs.hook.virtiofsd_fuse_releasedir(req=fs.req(), nodeid=ROOT, fh=fh)
