"""Hostile guests against our daemon: lying lengths, truncated arguments, path tricks, broken
descriptor chains and broken vhost-user messages.

The names a guest sends are tested in ``test_name_hygiene.py``, on both daemons.

Only ours runs here (``daemon_kind`` is overridden below): the Rust reference panics on some of
these inputs (a descriptor outside guest memory kills it, see
``test_frontend_against_reference.py``), which is no baseline to compare against.

After every test the shared daemon must still be alive, answer a GETATTR of the root with the
share's inode, and its log must hold no traceback: a guest may get an error reply or have its
chain dropped, but never crash, hang or confuse the daemon.  Host-side checks make sure nothing
outside the share, and nothing the request did not name, was touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, Opcode
from virtiofsd.testing import BackendProtocolError, FuseClient, RawDescriptor, VhostUserFrontend
from virtiofsd.testing.driver_ring import VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE
from virtiofsd.testing.fuse_client import parse_entry
from virtiofsd.vhost_user import messages as vu
from virtiofsd.vhost_user.messages import FrontendRequest as Req

from hostile_helpers import REPLY, fuse_error, snapshot, still_serving  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def daemon_kind() -> str:
    return "ours"


# -- lying lengths ---------------------------------------------------------------------------------


def test_header_length_beyond_the_chain_is_refused(workdir) -> None:
    fuse = workdir.client
    body = b"anything\0"
    assert fuse.request(Opcode.LOOKUP, ROOT_ID, body, REPLY, length=40 + len(body) + 100) == (
        errno.EINVAL,
        b"",
    )
    # Beyond anything ever negotiated: ENOMEM without looking, as the Rust daemon answers.
    assert fuse.request(Opcode.LOOKUP, ROOT_ID, body, REPLY, length=1 << 30) == (errno.ENOMEM, b"")
    assert fuse.request(Opcode.LOOKUP, ROOT_ID, body, REPLY, length=0xFFFFFFFF)[0] != 0


@pytest.mark.parametrize("length", [0, 8, 39])
def test_header_length_shorter_than_the_header_is_refused(workdir, length: int) -> None:
    fuse = workdir.client
    assert fuse.request(Opcode.GETATTR, ROOT_ID, bytes(16), REPLY, length=length) == (
        errno.EINVAL,
        b"",
    )


def test_header_length_that_cuts_the_name_short_is_refused(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    (host / "longname").touch()
    body = b"longname\0"
    error, _ = fuse.request(Opcode.LOOKUP, workdir.nodeid, body, REPLY, length=40 + 4)
    assert error == errno.EINVAL, "b'long' without its NUL is no name"


def test_extension_length_beyond_the_request_is_refused(workdir) -> None:
    fuse = workdir.client
    ticket = fuse.submit(Opcode.GETATTR, ROOT_ID, bytes(16), REPLY, extensions=bytes(8))
    error, _ = fuse.wait(ticket)
    assert error in (0, errno.EINVAL)  # an empty 8-byte extension may be skipped or refused
    header = abi.IN_HEADER.pack(40 + 16, Opcode.GETATTR, 0, ROOT_ID, 0, 0, 0, 100, 0)
    used, reply = submit_raw(fuse, header + bytes(16), REPLY)
    assert reply_error(reply, used) == errno.EINVAL


# -- truncated and malformed arguments -------------------------------------------------------------

TRUNCATED = {
    Opcode.GETATTR: 4,
    Opcode.SETATTR: 10,
    Opcode.MKNOD: 6,
    Opcode.MKDIR: 4,
    Opcode.RENAME: 4,
    Opcode.RENAME2: 12,
    Opcode.LINK: 6,
    Opcode.OPEN: 4,
    Opcode.READ: 20,
    Opcode.WRITE: 30,
    Opcode.RELEASE: 10,
    Opcode.FSYNC: 8,
    Opcode.FLUSH: 8,
    Opcode.ACCESS: 2,
    Opcode.CREATE: 12,
    Opcode.OPENDIR: 4,
    Opcode.READDIR: 20,
    Opcode.READDIRPLUS: 20,
    Opcode.RELEASEDIR: 10,
    Opcode.FSYNCDIR: 8,
    Opcode.FALLOCATE: 24,
    Opcode.LSEEK: 16,
    Opcode.COPY_FILE_RANGE: 40,
    Opcode.SYNCFS: 4,
}


@pytest.mark.parametrize("opcode", list(TRUNCATED), ids=lambda opcode: Opcode(opcode).name)
def test_truncated_arguments_are_refused(workdir, opcode: int) -> None:
    fuse = workdir.client
    before = snapshot(workdir.host)
    body = b"\x01" * TRUNCATED[opcode]
    assert fuse.request(opcode, workdir.nodeid, body, REPLY) == (errno.EINVAL, b"")
    assert fuse.request(opcode, workdir.nodeid, b"", REPLY) == (errno.EINVAL, b"")
    assert snapshot(workdir.host) == before


def test_truncated_init_does_not_end_the_session(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    (host / "kept").touch()
    nodeid = fuse.lookup(workdir.nodeid, "kept").nodeid
    assert fuse.request(Opcode.INIT, 0, bytes(6), 64) == (errno.EINVAL, b"")
    assert fuse.getattr(nodeid).attr.ino == os.lstat(host / "kept").st_ino


@pytest.mark.parametrize("opcode", [Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT])
def test_truncated_requests_without_reply_are_dropped(workdir, opcode: int) -> None:
    fuse, host = workdir.client, workdir.host
    (host / "f").touch()
    nodeid = fuse.lookup(workdir.nodeid, "f").nodeid
    queue = 1 if opcode == Opcode.INTERRUPT else 0
    for body in (b"", b"\x01\x00\x00"):
        assert fuse.request(opcode, nodeid, body, None, queue=queue) == (0, b"")
    assert fuse.getattr(nodeid).attr.ino == os.lstat(host / "f").st_ino, "nothing was forgotten"


def test_batch_forget_counting_more_than_its_body_is_dropped(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    (host / "f").touch()
    nodeid = fuse.lookup(workdir.nodeid, "f").nodeid
    body = abi.BATCH_FORGET_IN.pack(100_000, 0) + abi.FORGET_ONE.pack(nodeid, 1)
    assert fuse.request(Opcode.BATCH_FORGET, 0, body, None, queue=0) == (0, b"")
    body = abi.BATCH_FORGET_IN.pack(0xFFFFFFFF, 0)
    assert fuse.request(Opcode.BATCH_FORGET, 0, body, None, queue=0) == (0, b"")
    assert fuse.getattr(nodeid).attr.ino == os.lstat(host / "f").st_ino


def test_write_declaring_more_data_than_it_carries_is_refused(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    entry, handle = fuse.create(workdir.nodeid, "f", 0o644, os.O_RDWR | os.O_CREAT)
    header = abi.WRITE_IN.pack(handle.fh, 0, 4096, 0, 0, 0, 0)
    error, _ = fuse.request(Opcode.WRITE, entry.nodeid, (header, b"only this"), REPLY)
    assert error == errno.EINVAL
    assert (host / "f").read_bytes() == b""
    fuse.release(entry.nodeid, handle.fh)


# -- node ids and handles --------------------------------------------------------------------------


@pytest.mark.parametrize("nodeid", [0, 999_999, 1 << 63, (1 << 64) - 1])
def test_unknown_node_ids_are_refused(workdir, nodeid: int) -> None:
    fuse = workdir.client
    assert fuse_error(fuse.getattr, nodeid) == errno.EBADF
    assert fuse_error(fuse.lookup, nodeid, "x") == errno.EBADF
    assert fuse_error(fuse.open, nodeid, os.O_RDONLY) == errno.EBADF
    assert fuse_error(fuse.mkdir, nodeid, "x") == errno.EBADF
    assert fuse_error(fuse.setattr, nodeid, mode=0o777) == errno.EBADF
    assert fuse_error(fuse.link, nodeid, workdir.nodeid, "x") == errno.EBADF
    assert fuse_error(fuse.rename, workdir.nodeid, "x", nodeid, "y") == errno.EBADF
    assert not (workdir.host / "x").exists()


def test_forget_of_unknown_nodes_and_over_forgetting(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    (host / "f").touch()
    fuse.forget(999_999, 1)
    fuse.forget((1 << 64) - 1, (1 << 64) - 1)
    fuse.batch_forget([(0, 5), (123_456, 1), (1 << 63, 1 << 63)])
    nodeid = fuse.lookup(workdir.nodeid, "f").nodeid
    fuse.forget(nodeid, 1000)
    assert fuse_error(fuse.getattr, nodeid) == errno.EBADF
    fuse.forget(nodeid, 1)
    again = fuse.lookup(workdir.nodeid, "f")
    assert fuse.getattr(again.nodeid).attr.ino == os.lstat(host / "f").st_ino


def test_forgetting_the_root_keeps_it(workdir) -> None:
    fuse = workdir.client
    fuse.forget(ROOT_ID, 1 << 40)
    fuse.batch_forget([(ROOT_ID, 7)])
    assert fuse.getattr(ROOT_ID).attr.ino == os.stat(workdir.session.shared_dir).st_ino
    assert fuse.lookup(ROOT_ID, workdir.host.name).attr.ino == os.lstat(workdir.host).st_ino


def test_handles_of_other_nodes_and_unknown_handles_are_refused(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    (host / "a").write_bytes(b"A")
    (host / "b").write_bytes(b"B")
    a = fuse.lookup(workdir.nodeid, "a").nodeid
    b = fuse.lookup(workdir.nodeid, "b").nodeid
    handle = fuse.open(a, os.O_RDWR)
    assert fuse_error(fuse.read, b, handle.fh, 0, 10) == errno.EBADF
    assert fuse_error(fuse.write, b, handle.fh, 0, b"x") == errno.EBADF
    assert fuse_error(fuse.read, a, handle.fh + 1000, 0, 10) == errno.EBADF
    assert fuse_error(fuse.read, a, (1 << 64) - 1, 0, 10) == errno.EBADF
    assert fuse_error(fuse.readdir, a, handle.fh) in (errno.ENOTDIR, errno.EBADF)
    assert fuse_error(fuse.releasedir, workdir.nodeid, handle.fh) == errno.EBADF
    assert fuse.read(a, handle.fh, 0, 10) == b"A", "the handle still works for its own node"
    fuse.release(a, handle.fh)
    assert (host / "b").read_bytes() == b"B"


def test_absurd_offsets_and_sizes(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    entry, handle = fuse.create(workdir.nodeid, "f", 0o644, os.O_RDWR | os.O_CREAT)
    fuse.write(entry.nodeid, handle.fh, 0, b"0123456789")
    nodeid, fh = entry.nodeid, handle.fh
    for offset in ((1 << 63), (1 << 64) - 1):
        assert fuse_error(fuse.read, nodeid, fh, offset, 10) == errno.EINVAL
        assert fuse_error(fuse.write, nodeid, fh, offset, b"x") == errno.EINVAL
        assert fuse_error(fuse.lseek, nodeid, fh, offset, os.SEEK_SET) == errno.EINVAL
        assert fuse_error(fuse.fallocate, nodeid, fh, offset, 10) in (errno.EINVAL, errno.EFBIG)
        assert fuse_error(fuse.setattr, nodeid, size=offset) == errno.EINVAL
    assert fuse_error(fuse.lseek, nodeid, fh, 0, 99) == errno.EINVAL
    # A READ asking for 4 GiB into a 256-byte buffer gets at most what fits.
    error, payload = fuse.request(
        Opcode.READ, nodeid, abi.READ_IN.pack(fh, 0, 0xFFFFFFFF, 0, 0, 0, 0), REPLY
    )
    assert error != 0 or payload == b"0123456789"
    fuse.release(nodeid, fh)
    assert (host / "f").read_bytes() == b"0123456789"


def test_reply_larger_than_the_guest_buffer_is_an_error_reply(workdir) -> None:
    fuse = workdir.client
    assert fuse.request(Opcode.GETATTR, ROOT_ID, bytes(16), 10) == (errno.ERANGE, b"")
    assert fuse.request(Opcode.LOOKUP, ROOT_ID, workdir.host.name.encode() + b"\0", 0) == (
        errno.ERANGE,
        b"",
    )


# -- descriptor chains -----------------------------------------------------------------------------


def submit_raw(
    fuse: FuseClient, request: bytes, reply_size: int, *, timeout: float = 5.0
) -> tuple[int, memoryview]:
    """One readable buffer holding ``request`` and one writable of ``reply_size``; returns the
    used length and the reply buffer."""
    request_gpa, request_view = fuse.alloc_buffer(max(len(request), 1))
    request_view[: len(request)] = request
    reply_gpa, reply_view = fuse.alloc_buffer(max(reply_size, 1))
    ticket = fuse.submit_descriptors(
        [
            RawDescriptor(request_gpa, len(request), next=1),
            RawDescriptor(reply_gpa, reply_size, flags=VRING_DESC_F_WRITE),
        ]
    )
    return fuse.wait_raw(ticket, timeout=timeout), reply_view


def reply_error(reply: memoryview, used: int) -> int:
    length, error, _unique = abi.OUT_HEADER.unpack_from(reply)
    assert length == used
    return -error


def getattr_request(fuse: FuseClient) -> bytes:
    return fuse.encode_in_header(Opcode.GETATTR, ROOT_ID, 16) + bytes(16)


def guest_memory_end(fuse: FuseClient) -> int:
    return fuse.frontend.memory.regions[-1].end


def test_writable_buffer_smaller_than_the_out_header_gets_nothing(workdir) -> None:
    used, _ = submit_raw(workdir.client, getattr_request(workdir.client), 8)
    assert used == 0


@pytest.mark.parametrize("where", ["readable", "writable"])
@pytest.mark.parametrize(
    "place",
    ["beyond-memory", "straddling-the-end", "wrapping-around", "huge-length"],
)
def test_descriptor_outside_guest_memory_is_dropped(workdir, where: str, place: str) -> None:
    fuse = workdir.client
    end = guest_memory_end(fuse)
    addr, length = {
        "beyond-memory": (end + (1 << 30), 256),
        "straddling-the-end": (end - 8, 256),
        "wrapping-around": ((1 << 64) - 16, 256),
        "huge-length": (0, 0xFFFFFFFF),
    }[place]
    request = getattr_request(fuse)
    request_gpa, request_view = fuse.alloc_buffer(len(request))
    request_view[:] = request
    reply_gpa, _ = fuse.alloc_buffer(REPLY)
    if where == "readable":
        descriptors = [
            RawDescriptor(addr, length, next=1),
            RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE),
        ]
    else:
        descriptors = [
            RawDescriptor(request_gpa, len(request), next=1),
            RawDescriptor(addr, length, flags=VRING_DESC_F_WRITE),
        ]
    assert fuse.wait_raw(fuse.submit_descriptors(descriptors), timeout=5.0) == 0


def test_descriptor_loop_is_dropped(workdir) -> None:
    fuse = workdir.client
    request = getattr_request(fuse)
    request_gpa, request_view = fuse.alloc_buffer(len(request))
    request_view[:] = request
    reply_gpa, _ = fuse.alloc_buffer(REPLY)
    loop = [
        RawDescriptor(request_gpa, len(request), next=1),
        RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE, next=2),
        RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE, next=1),
    ]
    assert fuse.wait_raw(fuse.submit_descriptors(loop), timeout=5.0) == 0
    self_loop = [RawDescriptor(request_gpa, len(request), next=0)]
    assert fuse.wait_raw(fuse.submit_descriptors(self_loop), timeout=5.0) == 0


def test_next_index_outside_the_table_is_dropped(workdir) -> None:
    fuse = workdir.client
    request = getattr_request(fuse)
    request_gpa, request_view = fuse.alloc_buffer(len(request))
    request_view[:] = request
    chain = [RawDescriptor(request_gpa, len(request), flags=1, next_index=60_000)]
    assert fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0) == 0


def test_chain_as_long_as_the_queue_is_served(workdir) -> None:
    """The longest legal chain: every descriptor of the table, the request cut into bytes."""
    fuse = workdir.client
    name = "n" * 200
    (workdir.host / name).write_bytes(b"long chain")
    size = fuse.frontend.queues[1].size
    body = name.encode() + b"\0"
    request = fuse.encode_in_header(Opcode.LOOKUP, workdir.nodeid, len(body)) + body
    request_gpa, request_view = fuse.alloc_buffer(len(request))
    request_view[:] = request
    reply_gpa, reply_view = fuse.alloc_buffer(REPLY)
    pieces = [1] * (size - 2)
    pieces.append(len(request) - sum(pieces))
    assert pieces[-1] > 0
    chain = []
    offset = 0
    for position, piece in enumerate(pieces):
        chain.append(RawDescriptor(request_gpa + offset, piece, next=position + 1))
        offset += piece
    chain.append(RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE))
    assert len(chain) == size
    used = fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0)
    assert used == 16 + abi.ENTRY_OUT.size
    assert reply_error(reply_view, used) == 0
    entry = parse_entry(bytes(reply_view[16:used]))
    assert entry.attr.ino == os.lstat(workdir.host / name).st_ino


def test_readable_descriptor_after_a_writable_one_is_dropped(workdir) -> None:
    fuse = workdir.client
    request = getattr_request(fuse)
    request_gpa, request_view = fuse.alloc_buffer(len(request) + 16)
    request_view[: len(request)] = request
    reply_gpa, _ = fuse.alloc_buffer(REPLY)
    chain = [
        RawDescriptor(request_gpa, len(request) - 16, next=1),
        RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE, next=2),
        RawDescriptor(request_gpa + len(request) - 16, 16),
    ]
    assert fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0) == 0


def test_indirect_descriptor_that_was_not_negotiated_is_dropped(workdir) -> None:
    fuse = workdir.client
    table_gpa, _ = fuse.alloc_buffer(32)
    chain = [RawDescriptor(table_gpa, 32, flags=VRING_DESC_F_INDIRECT)]
    assert fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0) == 0


def test_chain_without_writable_buffer_is_dropped(workdir) -> None:
    fuse = workdir.client
    request = getattr_request(fuse)
    request_gpa, request_view = fuse.alloc_buffer(len(request))
    request_view[:] = request
    chain = [RawDescriptor(request_gpa, len(request))]
    assert fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0) == 0


def test_chain_with_no_readable_bytes_is_dropped(workdir) -> None:
    fuse = workdir.client
    reply_gpa, _ = fuse.alloc_buffer(REPLY)
    chain = [RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE)]
    assert fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0) == 0


def test_many_hostile_chains_in_a_row_leave_the_ring_working(workdir) -> None:
    """More broken chains than the error log lets through: the rate limit holds and every
    chain still comes back."""
    fuse = workdir.client
    end = guest_memory_end(fuse)
    reply_gpa, _ = fuse.alloc_buffer(REPLY)
    for _ in range(40):
        chain = [
            RawDescriptor(end + 4096, 64, next=1),
            RawDescriptor(reply_gpa, REPLY, flags=VRING_DESC_F_WRITE),
        ]
        assert fuse.wait_raw(fuse.submit_descriptors(chain), timeout=5.0) == 0
    assert fuse.lookup(ROOT_ID, workdir.host.name).nodeid == workdir.nodeid


# -- vhost-user messages ---------------------------------------------------------------------------


@contextlib.contextmanager
def raw_frontend(start_daemon, tmp_path: Path) -> Iterator[tuple[object, VhostUserFrontend]]:
    """Our daemon on an empty share and a front-end that has negotiated (features, owner) and
    nothing more: the test sends the rest by hand."""
    share = tmp_path / "share"
    share.mkdir()
    with start_daemon(share, connect_client=False) as session:
        with VhostUserFrontend.connect(session.socket_path) as frontend:
            frontend.negotiate()
            yield session, frontend


def _broken_payload_size(frontend: VhostUserFrontend) -> None:
    frontend.send(Req.SET_FEATURES, b"\0" * 4)


def _missing_kick_fd(frontend: VhostUserFrontend) -> None:
    frontend.send(Req.SET_VRING_KICK, vu.encode_vring_fd_payload(0))


def _memory_table_without_fds(frontend: VhostUserFrontend) -> None:
    regions = [vu.MemoryRegion(0, 1 << 20, 0x7F0000000000, 0)]
    frontend.send(Req.SET_MEM_TABLE, vu.encode_memory_table(regions))


def _oversized_header(frontend: VhostUserFrontend) -> None:
    frontend.send_raw(vu.encode_header(Req.SET_FEATURES, 0x1, 0xFFFFFFFF))


def _too_many_fds(frontend: VhostUserFrontend) -> None:
    read_end, write_end = os.pipe()
    try:
        frontend.send(Req.SET_FEATURES, vu.encode_u64(0), [read_end, write_end, read_end])
    finally:
        os.close(read_end)
        os.close(write_end)


def _garbage(frontend: VhostUserFrontend) -> None:
    frontend.send_raw(b"\xff" * 12)


@pytest.mark.parametrize(
    "breakage, what",
    [
        (_broken_payload_size, r"SET_FEATURES.*4 bytes"),
        (_missing_kick_fd, r"file descriptor"),
        (_memory_table_without_fds, r"SET_MEM_TABLE.*file descriptors"),
        (_oversized_header, r"4294967295 bytes"),
        (_garbage, r"version"),
        (_too_many_fds, r"SET_FEATURES: carries 3 file descriptors, expected 0"),
    ],
    ids=["wrong-payload-size", "missing-kick-fd", "mem-table-without-fds", "oversized", "garbage",
         "too-many-fds"],
)
def test_broken_vhost_user_message_ends_the_connection_cleanly(
    start_daemon, tmp_path: Path, breakage, what: str
) -> None:
    with raw_frontend(start_daemon, tmp_path) as (session, frontend):
        breakage(frontend)
        assert frontend.wait_for_disconnect(timeout=5.0), "the daemon hung up"
        status = session.process.wait(5)
        log = session.log_text()
    assert status != 0, "a connection ended by a protocol error is no clean exit"
    assert re.search(r"ERROR .*vhost-user protocol error.*" + what, log), log
    assert "Traceback" not in log, log



# -- refused vhost-user requests: a failure ack, a clear log line, the connection goes on ----------

MIB = 1 << 20
FRONTEND_BASE = 0x7F00_0000_0000


def memfd(size: int) -> int:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _overlapping_regions(frontend: VhostUserFrontend) -> None:
    fds = [memfd(MIB), memfd(MIB)]
    regions = [vu.MemoryRegion(0, MIB, FRONTEND_BASE, 0),
               vu.MemoryRegion(MIB // 2, MIB, FRONTEND_BASE + 2 * MIB, 0)]
    try:
        frontend.request(Req.SET_MEM_TABLE, vu.encode_memory_table(regions), fds)
    finally:
        for fd in fds:
            os.close(fd)


def _unmappable_region(frontend: VhostUserFrontend) -> None:
    """Guest RAM that is not shared memory: a pipe stands for an fd that cannot be mapped."""
    read_end, write_end = os.pipe()
    try:
        regions = [vu.MemoryRegion(0, MIB, FRONTEND_BASE, 0)]
        frontend.request(Req.SET_MEM_TABLE, vu.encode_memory_table(regions), [read_end])
    finally:
        os.close(read_end)
        os.close(write_end)


def _region_larger_than_its_fd(frontend: VhostUserFrontend) -> None:
    fd = memfd(MIB)
    try:
        regions = [vu.MemoryRegion(0, 16 * MIB, FRONTEND_BASE, 0)]
        frontend.request(Req.SET_MEM_TABLE, vu.encode_memory_table(regions), [fd])
    finally:
        os.close(fd)


def _one_mib_of_memory(frontend: VhostUserFrontend) -> None:
    fd = memfd(MIB)
    try:
        regions = [vu.MemoryRegion(0, MIB, FRONTEND_BASE, 0)]
        frontend.request(Req.SET_MEM_TABLE, vu.encode_memory_table(regions), [fd])
    finally:
        os.close(fd)
    frontend.request(Req.SET_VRING_NUM, vu.encode_vring_state(1, 256))


def _ring_outside_guest_memory(frontend: VhostUserFrontend) -> None:
    _one_mib_of_memory(frontend)
    outside = FRONTEND_BASE + 64 * MIB
    frontend.request(Req.SET_VRING_ADDR, vu.encode_vring_addr(
        vu.VringAddr(1, 0, outside, outside + 4096, outside + 8192, 0)))


def _ring_straddling_the_end_of_memory(frontend: VhostUserFrontend) -> None:
    """Each ring starts inside memory, the available ring runs past its end: refused when the
    ring would start."""
    _one_mib_of_memory(frontend)
    end = FRONTEND_BASE + MIB
    frontend.request(Req.SET_VRING_ADDR, vu.encode_vring_addr(
        vu.VringAddr(1, 0, end - 3 * 4096, end - 2 * 4096, end - 64, 0)))
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        frontend.request(Req.SET_VRING_KICK, vu.encode_vring_fd_payload(1), [kick])
    finally:
        os.close(kick)


def _ring_addresses_before_memory(frontend: VhostUserFrontend) -> None:
    frontend.request(Req.SET_VRING_ADDR, vu.encode_vring_addr(
        vu.VringAddr(1, 0, FRONTEND_BASE, FRONTEND_BASE + 4096, FRONTEND_BASE + 8192, 0)))


@pytest.mark.parametrize(
    "refused, what",
    [
        (_overlapping_regions, r"SET_MEM_TABLE: .*overlaps"),
        (_unmappable_region, r"SET_MEM_TABLE: cannot map memory region.*share=on"),
        (_region_larger_than_its_fd, r"SET_MEM_TABLE: .*fd is 0x100000 bytes.*share=on"),
        (_ring_outside_guest_memory, r"SET_VRING_ADDR: ring 1: .*not in any memory region"
                                     r".*share=on"),
        (_ring_straddling_the_end_of_memory, r"SET_VRING_KICK: ring 1 cannot start: virtqueue "
                                             r"rings are not in guest memory"),
        (_ring_addresses_before_memory, r"SET_VRING_ADDR: ring addresses given before any "
                                        r"memory table.*memory-backend-memfd"),
    ],
    ids=["overlapping-regions", "unmappable-region", "region-larger-than-fd", "ring-outside",
         "ring-straddling-the-end", "ring-before-memory"],
)
def test_refused_vhost_user_request_is_logged_and_the_connection_goes_on(
    start_daemon, tmp_path: Path, refused, what: str
) -> None:
    with raw_frontend(start_daemon, tmp_path) as (session, frontend):
        assert frontend.reply_ack
        frontend.set_features(frontend.offered_features)
        with pytest.raises(BackendProtocolError, match="was refused"):
            refused(frontend)
        assert frontend.query_u64(Req.GET_FEATURES) == frontend.offered_features
        assert session.process.poll() is None
        log = session.log_text()
    assert re.search(r"ERROR .*refusing front-end request " + what, log), log
    assert "Traceback" not in log, log
