"""The FUSE codec: requests decoded from guest buffers, replies encoded into them."""

from __future__ import annotations

import errno
import itertools
import struct

import pytest

from virtiofsd.errors import FuseError, GuestProtocolError
from virtiofsd.fuse import abi, codec
from virtiofsd.fuse.session import FuseSession
from virtiofsd.hookspecs import fuse_ops
from virtiofsd.manager import make_plugin_manager

Op = abi.Opcode
F = abi.InitFlag
SESSION = FuseSession(7, 38, F.ASYNC_READ, abi.MAX_WRITE, 131072, abi.MAX_PAGES, True)
SESSION_XATTR_EXT = FuseSession(7, 38, F.SETXATTR_EXT, abi.MAX_WRITE, 131072, abi.MAX_PAGES, True)


def request(opcode: int, args: bytes = b"", *, nodeid: int = 5, unique: int = 77,
            total_extlen: int = 0, length: int | None = None) -> bytes:
    """A whole request as the guest writes it: fuse_in_header + arguments."""
    total = abi.IN_HEADER.size + len(args) if length is None else length
    return abi.IN_HEADER.pack(total, opcode, unique, nodeid, 1000, 100, 4242, total_extlen,
                              0) + args


def split(data: bytes, *cuts: int) -> list[memoryview]:
    """``data`` spread over separate buffers, cut at the given offsets."""
    bounds = [0, *cuts, len(data)]
    return [memoryview(bytearray(data[lo:hi])) for lo, hi in itertools.pairwise(bounds)]


def linux_layout(data: bytes) -> list[memoryview]:
    """Header in one buffer, the arguments in the next: what the Linux guest sends."""
    return split(data, abi.IN_HEADER.size)


def decode(readable: list[memoryview], session: FuseSession = SESSION):
    header = codec.read_header(readable)
    operation = codec.OPERATIONS[header[1]]
    return codec.decode_request(readable, header, operation, session)


# --- One case per opcode: (opcode, argument bytes, expected keyword arguments) -----------------

NODE = 5
CASES = [
    (Op.LOOKUP, b"file.txt\0", {"parent": NODE, "name": b"file.txt"}),
    (Op.FORGET, abi.FORGET_IN.pack(3), {"nodeid": NODE, "nlookup": 3}),
    (Op.BATCH_FORGET,
     abi.BATCH_FORGET_IN.pack(2, 0) + abi.FORGET_ONE.pack(9, 1) + abi.FORGET_ONE.pack(10, 7),
     {"forgets": [(9, 1), (10, 7)]}),
    (Op.GETATTR, abi.GETATTR_IN.pack(0, 0, 99), {"nodeid": NODE, "fh": None}),
    (Op.SETATTR,
     abi.SETATTR_IN.pack(abi.FATTR_MODE | abi.FATTR_ATIME | abi.FATTR_MTIME | abi.FATTR_SIZE,
                         0, 0, 4096, 0, 1_700_000_000, (-2) & (2**64 - 1), 0, 5, 6, 0,
                         0o100644, 0, 1000, 100, 0),
     {"nodeid": NODE, "valid": abi.FATTR_MODE | abi.FATTR_ATIME | abi.FATTR_MTIME
      | abi.FATTR_SIZE, "fh": None, "mode": 0o100644, "uid": 1000, "gid": 100, "size": 4096,
      "atime_ns": 1_700_000_000_000_000_005, "mtime_ns": -2_000_000_000 + 6}),
    (Op.READLINK, b"", {"nodeid": NODE}),
    (Op.SYMLINK, b"link\0../target/x\0", {"parent": NODE, "name": b"link",
                                            "target": b"../target/x"}),
    (Op.MKNOD, abi.MKNOD_IN.pack(0o10644, 0, 0o022, 0) + b"fifo\0",
     {"parent": NODE, "name": b"fifo", "mode": 0o10644, "rdev": 0, "umask": 0o022}),
    (Op.MKDIR, abi.MKDIR_IN.pack(0o755, 0o022) + b"dir\0",
     {"parent": NODE, "name": b"dir", "mode": 0o755, "umask": 0o022}),
    (Op.UNLINK, b"gone\0", {"parent": NODE, "name": b"gone"}),
    (Op.RMDIR, b"gonedir\0", {"parent": NODE, "name": b"gonedir"}),
    (Op.RENAME, abi.RENAME_IN.pack(8) + b"old\0new\0",
     {"parent": NODE, "name": b"old", "newparent": 8, "newname": b"new", "flags": 0}),
    (Op.RENAME2, abi.RENAME2_IN.pack(8, 1, 0) + b"old\0new\0",
     {"parent": NODE, "name": b"old", "newparent": 8, "newname": b"new", "flags": 1}),
    (Op.LINK, abi.LINK_IN.pack(12) + b"hard\0",
     {"nodeid": 12, "newparent": NODE, "newname": b"hard"}),
    (Op.OPEN, abi.OPEN_IN.pack(0o2, abi.OPEN_KILL_SUIDGID),
     {"nodeid": NODE, "flags": 0o2, "open_flags": abi.OPEN_KILL_SUIDGID}),
    (Op.READ, abi.READ_IN.pack(3, 4096, 8192, 0, 0, 0o2, 0),
     {"nodeid": NODE, "fh": 3, "offset": 4096, "size": 8192, "flags": 0o2}),
    (Op.STATFS, b"", {"nodeid": NODE}),
    (Op.RELEASE, abi.RELEASE_IN.pack(3, 0o2, abi.RELEASE_FLUSH, 77),
     {"nodeid": NODE, "fh": 3, "flags": 0o2, "release_flags": abi.RELEASE_FLUSH,
      "lock_owner": 77}),
    (Op.FSYNC, abi.FSYNC_IN.pack(3, abi.FSYNC_FDATASYNC, 0),
     {"nodeid": NODE, "fh": 3, "datasync": True}),
    (Op.SETXATTR, abi.SETXATTR_IN_COMPAT.pack(5, 1) + b"user.x\0hello",
     {"nodeid": NODE, "name": b"user.x", "value": b"hello", "flags": 1, "setxattr_flags": 0}),
    (Op.GETXATTR, abi.GETXATTR_IN.pack(64, 0) + b"user.x\0",
     {"nodeid": NODE, "name": b"user.x", "size": 64}),
    (Op.LISTXATTR, abi.GETXATTR_IN.pack(0, 0), {"nodeid": NODE, "size": 0}),
    (Op.REMOVEXATTR, b"user.x\0", {"nodeid": NODE, "name": b"user.x"}),
    (Op.FLUSH, abi.FLUSH_IN.pack(3, 0, 0, 55), {"nodeid": NODE, "fh": 3, "lock_owner": 55}),
    (Op.OPENDIR, abi.OPEN_IN.pack(0o200000, 0), {"nodeid": NODE, "flags": 0o200000}),
    (Op.READDIR, abi.READ_IN.pack(4, 2, 4096, 0, 0, 0, 0),
     {"nodeid": NODE, "fh": 4, "offset": 2, "size": 4096}),
    (Op.RELEASEDIR, abi.RELEASE_IN.pack(4, 0, 0, 0), {"nodeid": NODE, "fh": 4}),
    (Op.FSYNCDIR, abi.FSYNC_IN.pack(4, 0, 0), {"nodeid": NODE, "fh": 4, "datasync": False}),
    (Op.ACCESS, abi.ACCESS_IN.pack(4, 0), {"nodeid": NODE, "mask": 4}),
    (Op.CREATE, abi.CREATE_IN.pack(0o102, 0o644, 0o022, 0) + b"new.txt\0",
     {"parent": NODE, "name": b"new.txt", "mode": 0o644, "flags": 0o102, "umask": 0o022,
      "open_flags": 0}),
    (Op.FALLOCATE, abi.FALLOCATE_IN.pack(3, 100, 200, 1, 0),
     {"nodeid": NODE, "fh": 3, "offset": 100, "length": 200, "mode": 1}),
    (Op.READDIRPLUS, abi.READ_IN.pack(4, 0, 8192, 0, 0, 0, 0),
     {"nodeid": NODE, "fh": 4, "offset": 0, "size": 8192}),
    (Op.LSEEK, abi.LSEEK_IN.pack(3, 10, 3, 0), {"nodeid": NODE, "fh": 3, "offset": 10,
                                                 "whence": 3}),
    (Op.COPY_FILE_RANGE, abi.COPY_FILE_RANGE_IN.pack(3, 0, 9, 4, 512, 1024, 0),
     {"nodeid": NODE, "fh_in": 3, "off_in": 0, "nodeid_out": 9, "fh_out": 4, "off_out": 512,
      "length": 1024, "flags": 0}),
    (Op.SYNCFS, abi.SYNCFS_IN.pack(0), {"nodeid": NODE}),
    (Op.GETLK, abi.LK_IN.pack(3, 0xABC, 10, 19, 1, 4242, 0, 0),
     {"nodeid": NODE, "fh": 3, "owner": 0xABC, "start": 10, "end": 19, "lock_type": 1,
      "pid": 4242, "lk_flags": 0}),
    (Op.SETLK, abi.LK_IN.pack(3, 0xABC, 0, (1 << 63) - 1, 0, 4242, abi.LK_FLOCK, 0),
     {"nodeid": NODE, "fh": 3, "owner": 0xABC, "start": 0, "end": (1 << 63) - 1,
      "lock_type": 0, "pid": 4242, "lk_flags": abi.LK_FLOCK, "sleep": False}),
    (Op.SETLKW, abi.LK_IN.pack(3, 0xABC, 5, 5, 1, 4242, 0, 0),
     {"nodeid": NODE, "fh": 3, "owner": 0xABC, "start": 5, "end": 5, "lock_type": 1,
      "pid": 4242, "lk_flags": 0, "sleep": True}),
    (Op.TMPFILE, abi.CREATE_IN.pack(0o20200002, 0o600, 0o022, 0) + b"/\0",
     {"parent": NODE, "name": b"/", "mode": 0o600, "flags": 0o20200002, "umask": 0o022,
      "open_flags": 0}),
]

WRITE_ARGS = abi.WRITE_IN.pack(3, 100, 11, abi.WRITE_CACHE, 0, 0o2, 0) + b"hello world"
WRITE_KWARGS = {"nodeid": NODE, "fh": 3, "offset": 100, "size": 11,
                "write_flags": abi.WRITE_CACHE, "flags": 0o2}


def _decoded_write(kwargs: dict) -> dict:
    result = dict(kwargs)
    result["data"] = b"".join(result["data"])
    return result


@pytest.mark.parametrize("opcode,args,expected", CASES, ids=[c[0].name for c in CASES])
@pytest.mark.parametrize("layout", ["one buffer", "linux"])
def test_every_opcode_decodes_to_its_hook_arguments(opcode, args, expected, layout):
    data = request(opcode, args, nodeid=NODE)
    readable = [memoryview(bytearray(data))] if layout == "one buffer" else linux_layout(data)
    req, kwargs = decode(readable)
    assert kwargs == expected
    assert (req.unique, req.opcode, req.nodeid, req.uid, req.gid, req.pid) == (
        77, opcode, NODE, 1000, 100, 4242)
    assert req.session is SESSION


def test_write_decodes_with_its_data():
    _req, kwargs = decode(linux_layout(request(Op.WRITE, WRITE_ARGS, nodeid=NODE)))
    assert _decoded_write(kwargs) == {**WRITE_KWARGS, "data": b"hello world"}


def test_every_fuse_op_hook_has_a_decoder_with_the_spec_arguments():
    """The decoder table is the contract with the plugins: names and arguments must match."""
    pm = make_plugin_manager(load_entry_points=False)
    decoded = {opcode: kwargs for opcode, _args, kwargs in CASES}
    decoded[Op.WRITE] = {**WRITE_KWARGS, "data": None}
    spec_hooks = {name for name in dir(fuse_ops) if name.startswith("virtiofsd_fuse_")}
    routed = {operation.hook_name for operation in codec.OPERATIONS.values()}
    assert spec_hooks - routed == {"virtiofsd_fuse_init", "virtiofsd_fuse_destroy"}
    assert routed <= spec_hooks
    for opcode, operation in codec.OPERATIONS.items():
        argnames = set(getattr(pm.hook, operation.hook_name).spec.argnames) - {"req"}
        if opcode == Op.READ:
            argnames.discard("sink")
        assert set(decoded[opcode]) == argnames, Op(opcode).name


# --- Splits at every byte boundary --------------------------------------------------------------

SPLIT_CASES = [c for c in CASES if c[0] in (Op.LOOKUP, Op.RENAME2, Op.SETATTR, Op.CREATE)]


@pytest.mark.parametrize("opcode,args,expected", SPLIT_CASES, ids=[c[0].name for c in SPLIT_CASES])
def test_a_request_split_anywhere_decodes_the_same(opcode, args, expected):
    data = request(opcode, args, nodeid=NODE)
    for cut in range(1, len(data)):
        req, kwargs = decode(split(data, cut))
        assert kwargs == expected, cut
        assert req.unique == 77
    for cut in range(1, len(data) - 1, 7):
        _req, kwargs = decode(split(data, cut, cut + 1))
        assert kwargs == expected


def test_write_split_anywhere_decodes_the_same_data():
    data = request(Op.WRITE, WRITE_ARGS, nodeid=NODE)
    for cut in range(1, len(data)):
        _req, kwargs = decode(split(data, cut))
        assert _decoded_write(kwargs) == {**WRITE_KWARGS, "data": b"hello world"}, cut


def test_write_data_is_a_view_of_guest_memory_not_a_copy():
    header_and_args = request(Op.WRITE, WRITE_ARGS, nodeid=NODE)[:-11]
    page_one, page_two = bytearray(b"hello "), bytearray(b"world")
    readable = [memoryview(bytearray(header_and_args)), memoryview(page_one),
                memoryview(page_two)]
    _req, kwargs = decode(readable)
    assert [bytes(view) for view in kwargs["data"]] == [b"hello ", b"world"]
    page_two[:] = b"WORLD"
    assert bytes(kwargs["data"][1]) == b"WORLD"


def test_extra_chain_space_after_the_request_is_ignored():
    data = request(Op.LOOKUP, b"a\0") + b"\xff" * 50
    _req, kwargs = decode([memoryview(bytearray(data))])
    assert kwargs["name"] == b"a"


# --- Conditional fields -------------------------------------------------------------------------


def test_getattr_passes_fh_only_with_getattr_fh():
    _req, kwargs = decode(linux_layout(request(Op.GETATTR, abi.GETATTR_IN.pack(
        abi.GETATTR_FH, 0, 99))))
    assert kwargs["fh"] == 99


def test_setattr_passes_fh_only_with_fattr_fh():
    args = abi.SETATTR_IN.pack(abi.FATTR_FH | abi.FATTR_SIZE, 0, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                               0, 0, 0, 0)
    _req, kwargs = decode(linux_layout(request(Op.SETATTR, args)))
    assert kwargs["fh"] == 42


def test_setxattr_with_setxattr_ext_reads_the_long_struct():
    args = abi.SETXATTR_IN.pack(3, 2, abi.SETXATTR_ACL_KILL_SGID, 0) + b"system.x\0abc"
    _req, kwargs = decode(linux_layout(request(Op.SETXATTR, args)), SESSION_XATTR_EXT)
    assert kwargs == {"nodeid": NODE, "name": b"system.x", "value": b"abc", "flags": 2,
                      "setxattr_flags": abi.SETXATTR_ACL_KILL_SGID}


def test_setxattr_value_may_contain_nul_bytes():
    args = abi.SETXATTR_IN_COMPAT.pack(4, 0) + b"user.bin\0\0\x01\0\x02"
    _req, kwargs = decode(linux_layout(request(Op.SETXATTR, args)))
    assert kwargs["value"] == b"\0\x01\0\x02"


def test_init_reads_flags2_only_with_init_ext():
    without = abi.INIT_IN.pack(7, 38, 65536, F.ASYNC_READ, 0xFF)
    assert codec.INIT.decode(without, 0, SESSION)["flags2"] == 0
    with_ext = abi.INIT_IN.pack(7, 38, 65536, F.ASYNC_READ | F.INIT_EXT, 0xFF)
    assert codec.INIT.decode(with_ext, 0, SESSION) == {
        "major": 7, "minor": 38, "max_readahead": 65536, "flags": F.ASYNC_READ | F.INIT_EXT,
        "flags2": 0xFF}
    compat = abi.INIT_IN_COMPAT.pack(7, 31, 4096, F.ASYNC_READ)
    assert codec.INIT.decode(compat, 0, SESSION)["minor"] == 31
    with pytest.raises(GuestProtocolError):
        codec.INIT.decode(abi.INIT_IN_COMPAT.pack(7, 38, 0, F.INIT_EXT), 0, SESSION)


# --- Request extensions -------------------------------------------------------------------------


def _secctx(name: bytes, value: bytes) -> bytes:
    payload = abi.SECCTX.pack(len(value), 0) + name + b"\0" + value
    size = (abi.EXT_HEADER.size + len(payload) + 7) & ~7
    return abi.SECCTX_HEADER.pack(size, 1) + payload.ljust(size - 8, b"\0")


def _groups(*gids: int) -> bytes:
    payload = abi.SUPP_GROUPS.pack(len(gids)) + struct.pack(f"<{len(gids)}I", *gids)
    size = (abi.EXT_HEADER.size + len(payload) + 7) & ~7
    return abi.EXT_HEADER.pack(size, abi.EXT_SUP_GROUPS) + payload.ljust(size - 8, b"\0")


def _with_extensions(opcode: int, args: bytes, ext: bytes) -> bytes:
    assert len(ext) % 8 == 0
    return request(opcode, args + ext, total_extlen=len(ext) // 8)


MKDIR_ARGS = abi.MKDIR_IN.pack(0o755, 0o022) + b"dir\0"


def test_extensions_reach_the_request_and_not_the_arguments():
    ext = _secctx(b"security.selinux", b"system_u:object_r:x_t:s0\0") + _groups(10, 20)
    data = _with_extensions(Op.MKDIR, MKDIR_ARGS, ext)
    req, kwargs = decode(linux_layout(data))
    assert kwargs == {"parent": NODE, "name": b"dir", "mode": 0o755, "umask": 0o022}
    assert req.security_context == (b"security.selinux", b"system_u:object_r:x_t:s0\0")
    assert req.supplementary_groups == (10, 20)


def test_unknown_extension_types_are_skipped():
    unknown = abi.EXT_HEADER.pack(16, 99) + bytes(8)
    req, kwargs = decode(linux_layout(_with_extensions(Op.MKDIR, MKDIR_ARGS,
                                                       unknown + _groups(7))))
    assert kwargs["name"] == b"dir"
    assert req.supplementary_groups == (7,)
    assert req.security_context is None


def test_an_empty_security_context_block_means_none():
    req, _kwargs = decode(linux_layout(_with_extensions(Op.MKDIR, MKDIR_ARGS,
                                                        abi.SECCTX_HEADER.pack(8, 0))))
    assert req.security_context is None


@pytest.mark.parametrize("ext", [
    abi.EXT_HEADER.pack(24, abi.EXT_SUP_GROUPS) + bytes(8),   # claims more than there is
    abi.EXT_HEADER.pack(4, abi.EXT_SUP_GROUPS) + bytes(8),    # smaller than its own header
    abi.EXT_HEADER.pack(12, 99) + bytes(8),                   # not a multiple of 8
    abi.EXT_HEADER.pack(16, abi.EXT_SUP_GROUPS) + abi.SUPP_GROUPS.pack(1000) + bytes(4),
    abi.SECCTX_HEADER.pack(16, 1) + abi.SECCTX.pack(0, 0),    # name without NUL
    abi.SECCTX_HEADER.pack(24, 1) + abi.SECCTX.pack(100, 0) + b"n\0" + bytes(6),
    abi.SECCTX_HEADER.pack(16, 2) + abi.SECCTX.pack(0, 0),    # two contexts
], ids=["overlong", "undersized", "unaligned", "too-many-groups", "secctx-no-nul",
        "secctx-overlong-value", "two-contexts"])
def test_lying_extensions_are_refused(ext):
    with pytest.raises(GuestProtocolError):
        decode(linux_layout(_with_extensions(Op.MKDIR, MKDIR_ARGS, ext)))


def test_total_extlen_beyond_the_request_is_refused():
    data = request(Op.MKDIR, MKDIR_ARGS, total_extlen=100)
    with pytest.raises(GuestProtocolError, match="extensions"):
        decode(linux_layout(data))


# --- Malformed requests -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 39])
def test_a_chain_shorter_than_the_header_has_no_header(size):
    with pytest.raises(GuestProtocolError):
        codec.read_header([memoryview(bytearray(request(Op.LOOKUP, b"a\0")[:size]))])
    with pytest.raises(GuestProtocolError):
        codec.read_header([])


@pytest.mark.parametrize("length", [0, 39])
def test_a_header_length_below_40_is_refused(length):
    with pytest.raises(GuestProtocolError):
        decode(linux_layout(request(Op.LOOKUP, b"a\0", length=length)))


def test_a_header_claiming_more_than_the_chain_holds_is_refused():
    data = request(Op.LOOKUP, b"a\0", length=40 + 3)
    with pytest.raises(GuestProtocolError, match="buffers hold 42"):
        decode(linux_layout(data))


def test_a_header_claiming_more_than_we_ever_accept_gets_enomem():
    data = request(Op.LOOKUP, b"a\0", length=abi.MAX_REQUEST_SIZE + 1)
    with pytest.raises(FuseError) as info:
        decode(linux_layout(data))
    assert info.value.errno == errno.ENOMEM


FIXED_OPCODES = [Op.FORGET, Op.BATCH_FORGET, Op.GETATTR, Op.SETATTR, Op.MKNOD, Op.MKDIR,
                 Op.RENAME, Op.RENAME2, Op.LINK, Op.OPEN, Op.READ, Op.WRITE, Op.RELEASE,
                 Op.FSYNC, Op.SETXATTR, Op.GETXATTR, Op.LISTXATTR, Op.FLUSH, Op.OPENDIR,
                 Op.READDIR, Op.RELEASEDIR, Op.FSYNCDIR, Op.ACCESS, Op.CREATE, Op.FALLOCATE,
                 Op.READDIRPLUS, Op.LSEEK, Op.COPY_FILE_RANGE, Op.SYNCFS]


@pytest.mark.parametrize("opcode", FIXED_OPCODES, ids=[op.name for op in FIXED_OPCODES])
def test_arguments_shorter_than_the_struct_are_refused(opcode):
    for size in (0, 7):
        with pytest.raises(GuestProtocolError):
            decode(linux_layout(request(opcode, bytes(size))))


@pytest.mark.parametrize("opcode,prefix,body", [
    (Op.LOOKUP, b"", b"name"),                      # no NUL
    (Op.LOOKUP, b"", b"name\0junk"),                # data after the NUL
    (Op.LOOKUP, b"", b"na\0me\0"),                  # two names where one is expected
    (Op.LOOKUP, b"", b""),                          # nothing at all
    (Op.UNLINK, b"", b"x"),
    (Op.REMOVEXATTR, b"", b"user.x"),
    (Op.MKDIR, abi.MKDIR_IN.pack(0o755, 0), b"dir"),
    (Op.CREATE, abi.CREATE_IN.pack(0, 0o644, 0, 0), b"f\0\0"),
    (Op.SYMLINK, b"", b"name\0"),                   # target missing
    (Op.SYMLINK, b"", b"name\0target"),             # target without NUL
    (Op.RENAME, abi.RENAME_IN.pack(1), b"old\0"),
    (Op.RENAME2, abi.RENAME2_IN.pack(1, 0, 0), b"old\0new\0extra\0"),
    (Op.LINK, abi.LINK_IN.pack(3), b"x"),
    (Op.GETXATTR, abi.GETXATTR_IN.pack(0, 0), b"user.x"),
    (Op.SETXATTR, abi.SETXATTR_IN_COMPAT.pack(3, 0), b"user.x"),          # no NUL
    (Op.SETXATTR, abi.SETXATTR_IN_COMPAT.pack(30, 0), b"user.x\0abc"),    # size lies
    (Op.SETXATTR, abi.SETXATTR_IN_COMPAT.pack(1, 0), b"user.x\0abc"),     # size lies
])
def test_malformed_names_are_refused(opcode, prefix, body):
    with pytest.raises(GuestProtocolError):
        decode(linux_layout(request(opcode, prefix + body)))


def test_batch_forget_with_a_huge_count_is_refused():
    args = abi.BATCH_FORGET_IN.pack(0xFFFFFFFF, 0) + abi.FORGET_ONE.pack(1, 1)
    with pytest.raises(GuestProtocolError, match="BATCH_FORGET"):
        decode(linux_layout(request(Op.BATCH_FORGET, args)))


def test_write_claiming_more_data_than_sent_is_refused():
    args = abi.WRITE_IN.pack(3, 0, 4096, 0, 0, 0, 0) + b"short"
    with pytest.raises(GuestProtocolError, match="WRITE"):
        decode(linux_layout(request(Op.WRITE, args)))


@pytest.mark.parametrize("opcode,args", [
    (Op.READ, abi.READ_IN.pack(3, 0, abi.MAX_WRITE + 1, 0, 0, 0, 0)),
    (Op.READDIR, abi.READ_IN.pack(3, 0, 0xFFFFFFFF, 0, 0, 0, 0)),
    (Op.READDIRPLUS, abi.READ_IN.pack(3, 0, abi.MAX_WRITE + 1, 0, 0, 0, 0)),
    (Op.GETXATTR, abi.GETXATTR_IN.pack(abi.MAX_WRITE + 1, 0) + b"user.x\0"),
    (Op.LISTXATTR, abi.GETXATTR_IN.pack(0xFFFFFFFF, 0)),
    (Op.WRITE, abi.WRITE_IN.pack(3, 0, abi.MAX_WRITE + 1, 0, 0, 0, 0)),
], ids=["read", "readdir", "readdirplus", "getxattr", "listxattr", "write"])
def test_sizes_beyond_max_write_get_enomem(opcode, args):
    with pytest.raises(FuseError) as info:
        decode(linux_layout(request(opcode, args)))
    assert info.value.errno == errno.ENOMEM


def test_read_of_exactly_max_write_is_accepted():
    _req, kwargs = decode(linux_layout(request(Op.READ, abi.READ_IN.pack(
        3, 0, abi.MAX_WRITE, 0, 0, 0, 0))))
    assert kwargs["size"] == abi.MAX_WRITE


# --- Replies ------------------------------------------------------------------------------------


class GuardedMemory:
    """Writable views carved out of one bytearray with guard bytes around each, to prove
    nothing is ever written outside the views."""

    GUARD = 0xA5

    def __init__(self, *sizes: int) -> None:
        self.memory = bytearray([self.GUARD]) * (sum(sizes) + 8 * (len(sizes) + 1))
        self.views = []
        self.spans = []
        offset = 8
        whole = memoryview(self.memory)
        for size in sizes:
            self.views.append(whole[offset:offset + size])
            self.spans.append((offset, offset + size))
            offset += size + 8

    def content(self) -> bytes:
        return b"".join(bytes(view) for view in self.views)

    def guards_intact(self) -> bool:
        inside = set()
        for lo, hi in self.spans:
            inside.update(range(lo, hi))
        return all(byte == self.GUARD for index, byte in enumerate(self.memory)
                   if index not in inside)


def test_reply_in_one_buffer():
    memory = GuardedMemory(64)
    assert codec.write_reply(memory.views, 9, b"body") == 20
    assert memory.content()[:20] == abi.OUT_HEADER.pack(20, 0, 9) + b"body"
    assert memory.guards_intact()


def test_reply_in_the_linux_layout():
    memory = GuardedMemory(16, 128)
    body = bytes(range(128))
    assert codec.write_reply(memory.views, 9, body) == 144
    assert memory.content() == abi.OUT_HEADER.pack(144, 0, 9) + body
    assert memory.guards_intact()


@pytest.mark.parametrize("sizes", [(3, 20, 200), (1,) * 40, (17, 5, 10), (8, 8, 8, 8)])
def test_reply_scattered_over_odd_buffers(sizes):
    memory = GuardedMemory(*sizes)
    body = b"0123456789abcdefghijklmnop"[: sum(sizes) - 16]
    assert codec.write_reply(memory.views, 5, body) == 16 + len(body)
    assert memory.content()[:16 + len(body)] == abi.OUT_HEADER.pack(16 + len(body), 0, 5) + body
    assert memory.guards_intact()


def test_a_reply_that_does_not_fit_becomes_erange():
    memory = GuardedMemory(16, 10)
    assert codec.write_reply(memory.views, 5, bytes(11)) == 16
    assert abi.OUT_HEADER.unpack_from(memory.content()) == (16, -errno.ERANGE, 5)
    assert memory.content()[16:] == bytes([GuardedMemory.GUARD]) * 10
    assert memory.guards_intact()


@pytest.mark.parametrize("sizes", [(), (15,), (7, 8)])
def test_no_room_for_a_header_writes_nothing(sizes):
    memory = GuardedMemory(*sizes)
    assert codec.write_reply(memory.views, 5, b"x") == 0
    assert codec.write_error(memory.views, 5, errno.ENOENT) == 0
    assert memory.content() == bytes([GuardedMemory.GUARD]) * sum(sizes)
    assert memory.guards_intact()


def test_error_header_split_over_buffers():
    memory = GuardedMemory(10, 10)
    assert codec.write_error(memory.views, 3, errno.ENOENT) == 16
    assert abi.OUT_HEADER.unpack_from(memory.content()) == (16, -errno.ENOENT, 3)
    assert memory.guards_intact()


def test_reply_sink_offers_guest_memory_after_the_header():
    memory = GuardedMemory(16, 4096, 4096)
    sink = codec.ReplySink(memory.views)
    views = sink.buffers(6000)
    assert [len(view) for view in views] == [4096, 1904]
    views[0][:3] = b"abc"
    assert bytes(memory.views[1][:3]) == b"abc"
    assert sink.offered == 6000


def test_reply_sink_never_offers_more_than_the_guest_gave():
    memory = GuardedMemory(20, 10)
    sink = codec.ReplySink(memory.views)
    views = sink.buffers(1 << 20)
    assert [len(view) for view in views] == [4, 10]
    assert sink.offered == 14
    assert codec.ReplySink(GuardedMemory(10).views).buffers(100) == []
    with pytest.raises(ValueError):
        sink.buffers(-1)
