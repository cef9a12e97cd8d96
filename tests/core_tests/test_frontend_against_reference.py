"""The test front-end (``virtiofsd.testing``) against the real Rust virtiofsd.

If these pass, the front-end speaks vhost-user, drives split rings and encodes FUSE the way a
production back-end expects, so a failure of our own daemon under the same front-end is our
daemon's fault.  Every assertion compares what the daemon reports with what the host
filesystem says.  Each test starts its own daemon (tens of milliseconds).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from virtiofsd.fuse.abi import ROOT_ID, InitFlag, Opcode
from virtiofsd.testing import (
    BackendProtocolError,
    DaemonSession,
    DaemonStartError,
    FuseClient,
    FuseReplyError,
    GuestMemory,
    RawDescriptor,
    VhostUserFrontend,
    running_daemon,
)
from virtiofsd.testing.driver_ring import VRING_DESC_F_WRITE, need_event
from virtiofsd.testing.fuse_client import parse_entry
from virtiofsd.vhost_user.messages import ProtocolFeature, VirtioFeature
from support.attrs import assert_attr_matches

REFERENCE = Path("/var/tmp/virtiofsd-reference/rust-virtiofsd")
C_REFERENCE = Path("/var/tmp/virtiofsd-reference/c-virtiofsd")

needs_reference = pytest.mark.skipif(
    not os.access(REFERENCE, os.X_OK),
    reason=f"reference daemon {REFERENCE} not installed "
    "(install it with bash /work/shared/tools/reference-daemons.sh)",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch guest credentials")

RENAME_NOREPLACE = 1


def reference_command(*extra: str, sandbox: str = "none") -> list[str]:
    return [
        str(REFERENCE),
        "--socket-path",
        "{socket_path}",
        "--shared-dir",
        "{shared_dir}",
        "--sandbox",
        sandbox,
        *extra,
    ]


@contextmanager
def reference(
    share: Path, *extra: str, sandbox: str = "none", **client_options: object
) -> Iterator[DaemonSession]:
    with running_daemon(
        reference_command(*extra, sandbox=sandbox), share, **client_options
    ) as session:
        yield session


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "hello.txt").write_bytes(b"hello, world\n")
    (directory / "sub").mkdir()
    (directory / "sub" / "inner").write_bytes(b"x" * 10000)
    return directory


@pytest.fixture
def fuse(share: Path) -> Iterator[FuseClient]:
    with reference(share) as session:
        assert session.client is not None
        yield session.client


# -- front-end machinery that needs no daemon -----------------------------------------------


def test_need_event_matches_the_virtio_definition() -> None:
    assert need_event(event_idx=5, new_idx=6, old_idx=5)
    assert not need_event(event_idx=7, new_idx=6, old_idx=5)
    assert need_event(event_idx=0xFFFF, new_idx=1, old_idx=0xFFFE)


def test_silent_backend_times_out_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "s"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    try:
        with VhostUserFrontend.connect(path, timeout=0.3) as frontend:
            with pytest.raises(TimeoutError):
                frontend.start()
    finally:
        thread.join(5)
        for sock in (*accepted, listener):
            sock.close()


def test_guest_memory_translates_and_bounds_checks() -> None:
    with GuestMemory((1 << 16, 1 << 20)) as memory:
        first, second = memory.regions
        assert second.guest_phys_addr >= first.end
        gpa = memory.alloc(1 << 17)
        assert memory.region_of(gpa) is second, "a buffer too big for region 0 lands in region 1"
        memory.write(gpa, b"abc")
        assert memory.read(gpa, 3) == b"abc"
        assert memory.userspace_addr(gpa) - gpa == second.userspace_addr - second.guest_phys_addr
        with pytest.raises(ValueError):
            memory.view(first.end - 2, 4)


def test_daemon_that_dies_at_start_is_reported_with_its_log(share: Path) -> None:
    with pytest.raises(DaemonStartError, match="status"):
        with running_daemon(["sh", "-c", "echo broken-config >&2; exit 3"], share):
            pass


# -- against the reference daemon -----------------------------------------------------------


@needs_reference
def test_handshake_negotiates_like_qemu(share: Path) -> None:
    with reference(share, connect_client=False) as session:
        with VhostUserFrontend.connect(session.socket_path) as frontend:
            frontend.start()
            assert frontend.offered_features & VirtioFeature.VERSION_1
            assert frontend.protocol_features & ProtocolFeature.REPLY_ACK, "acks were checked"
            assert frontend.queue_num == 2
            assert [queue.size for queue in frontend.queues] == [128, 128]


@needs_reference
def test_init_reply_is_protocol_7_38(fuse: FuseClient) -> None:
    init = fuse.init_out
    assert init is not None
    assert (init.major, init.minor) == (7, 38)
    assert init.max_write == 1 << 20
    assert init.flags & InitFlag.DO_READDIRPLUS


@needs_reference
def test_lookup_and_getattr_match_the_host(fuse: FuseClient, share: Path) -> None:
    entry = fuse.lookup(ROOT_ID, "hello.txt")
    assert entry.nodeid > ROOT_ID
    assert_attr_matches(entry.attr, os.lstat(share / "hello.txt"))
    assert_attr_matches(fuse.getattr(entry.nodeid).attr, os.lstat(share / "hello.txt"))
    assert_attr_matches(fuse.getattr(ROOT_ID).attr, os.lstat(share))
    with pytest.raises(FuseReplyError) as missing:
        fuse.lookup(ROOT_ID, "no-such-file")
    assert missing.value.errno == errno.ENOENT
    assert missing.value.opcode == Opcode.LOOKUP


@needs_reference
def test_create_write_read_round_trip(fuse: FuseClient, share: Path) -> None:
    entry, handle = fuse.create(ROOT_ID, "data.bin", 0o640, os.O_RDWR | os.O_CREAT)
    payload = bytes(range(256)) * 4096  # exactly 1 MiB, the negotiated max_write
    assert fuse.write(entry.nodeid, handle.fh, 0, payload) == len(payload)
    assert fuse.read(entry.nodeid, handle.fh, 0, len(payload)) == payload
    assert fuse.read(entry.nodeid, handle.fh, len(payload) - 10, 100) == payload[-10:]
    fuse.flush(entry.nodeid, handle.fh)
    fuse.fsync(entry.nodeid, handle.fh, datasync=True)
    fuse.release(entry.nodeid, handle.fh)
    assert (share / "data.bin").read_bytes() == payload
    assert stat.S_IMODE(os.stat(share / "data.bin").st_mode) == 0o640


@needs_reference
def test_open_existing_file_reads_host_contents(fuse: FuseClient) -> None:
    entry = fuse.lookup(ROOT_ID, "hello.txt")
    handle = fuse.open(entry.nodeid, os.O_RDONLY)
    assert fuse.read(entry.nodeid, handle.fh, 0, 4096) == b"hello, world\n"
    fuse.release(entry.nodeid, handle.fh)


@needs_reference
def test_readdir_and_readdirplus_list_the_host_directory(fuse: FuseClient, share: Path) -> None:
    for index in range(40):  # enough entries to need more than one 4 KiB READDIRPLUS
        (share / f"file-{index:02}").touch()
    expected = {b".", b".."} | {os.fsencode(name) for name in os.listdir(share)}
    assert set(fuse.listdir(ROOT_ID)) == expected

    handle = fuse.opendir(ROOT_ID)
    seen = {}
    offset = 0
    while entries := fuse.readdirplus(ROOT_ID, handle.fh, offset, 4096):
        for item in entries:
            seen[item.dirent.name] = item
        offset = entries[-1].dirent.off
    fuse.releasedir(ROOT_ID, handle.fh)
    assert set(seen) == expected
    sub = seen[b"sub"]
    assert sub.entry.nodeid != 0
    assert_attr_matches(sub.entry.attr, os.lstat(share / "sub"))
    assert sub.dirent.type == stat.S_IFDIR >> 12
    assert seen[b"."].entry.nodeid == 0


@needs_reference
def test_namespace_operations_change_the_host(fuse: FuseClient, share: Path) -> None:
    directory = fuse.mkdir(ROOT_ID, "made", 0o750)
    assert stat.S_ISDIR(os.lstat(share / "made").st_mode)
    link = fuse.symlink(directory.nodeid, "ln", "../hello.txt")
    assert os.readlink(share / "made" / "ln") == "../hello.txt"
    assert fuse.readlink(link.nodeid) == b"../hello.txt"
    fifo = fuse.mknod(directory.nodeid, "fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(os.lstat(share / "made" / "fifo").st_mode)
    assert fifo.attr.ino == os.lstat(share / "made" / "fifo").st_ino

    hello = fuse.lookup(ROOT_ID, "hello.txt")
    linked = fuse.link(hello.nodeid, directory.nodeid, "hard")
    assert linked.attr.nlink == 2 == os.lstat(share / "hello.txt").st_nlink

    fuse.rename(directory.nodeid, "hard", ROOT_ID, "moved")
    assert (share / "moved").read_bytes() == b"hello, world\n"
    with pytest.raises(FuseReplyError) as exists:
        fuse.rename2(ROOT_ID, "moved", ROOT_ID, "hello.txt", RENAME_NOREPLACE)
    assert exists.value.errno == errno.EEXIST
    fuse.unlink(ROOT_ID, "moved")
    assert not (share / "moved").exists()

    with pytest.raises(FuseReplyError) as not_empty:
        fuse.rmdir(ROOT_ID, "made")
    assert not_empty.value.errno == errno.ENOTEMPTY
    for name in ("ln", "fifo"):
        fuse.unlink(directory.nodeid, name)
    fuse.rmdir(ROOT_ID, "made")
    assert not (share / "made").exists()
    fuse.forget(directory.nodeid)
    fuse.batch_forget([(link.nodeid, 1), (fifo.nodeid, 1), (hello.nodeid, 2)])


@needs_reference
def test_setattr_changes_mode_size_and_times(fuse: FuseClient, share: Path) -> None:
    entry = fuse.lookup(ROOT_ID, "hello.txt")
    out = fuse.setattr(entry.nodeid, mode=0o600, size=5, mtime_ns=1_000_000_123, atime_ns=2 * 10**9)
    host = os.lstat(share / "hello.txt")
    assert stat.S_IMODE(host.st_mode) == 0o600
    assert host.st_size == 5 == out.attr.size
    assert host.st_mtime_ns == 1_000_000_123
    assert host.st_atime_ns == 2 * 10**9
    assert_attr_matches(out.attr, host)


@needs_reference
def test_statfs_access_and_syncfs(fuse: FuseClient, share: Path) -> None:
    host = os.statvfs(share)
    statfs = fuse.statfs()
    assert (statfs.bsize, statfs.namelen, statfs.blocks) == (
        host.f_bsize,
        host.f_namemax,
        host.f_blocks,
    )
    fuse.access(ROOT_ID, os.R_OK | os.X_OK)
    fuse.syncfs()
    handle = fuse.opendir(ROOT_ID)
    fuse.fsyncdir(ROOT_ID, handle.fh)
    fuse.releasedir(ROOT_ID, handle.fh)


@needs_reference
def test_fallocate_lseek_and_copy_file_range(fuse: FuseClient, share: Path) -> None:
    source, source_handle = fuse.create(ROOT_ID, "src", 0o644, os.O_RDWR | os.O_CREAT)
    fuse.fallocate(source.nodeid, source_handle.fh, 0, 1 << 16)
    assert os.stat(share / "src").st_size == 1 << 16
    fuse.write(source.nodeid, source_handle.fh, 1 << 20, b"tail")
    data_at = fuse.lseek(source.nodeid, source_handle.fh, (1 << 20) - 1, os.SEEK_DATA)
    with open(share / "src", "rb") as host_file:
        assert data_at == os.lseek(host_file.fileno(), (1 << 20) - 1, os.SEEK_DATA)
    target, target_handle = fuse.create(ROOT_ID, "dst", 0o644, os.O_RDWR | os.O_CREAT)
    copied = fuse.copy_file_range(
        source.nodeid, source_handle.fh, 1 << 20, target.nodeid, target_handle.fh, 0, 4
    )
    assert copied == 4
    assert (share / "dst").read_bytes() == b"tail"
    fuse.release(source.nodeid, source_handle.fh)
    fuse.release(target.nodeid, target_handle.fh)


@needs_reference
def test_xattrs_round_trip_with_xattr_enabled(share: Path) -> None:
    with reference(share, "--xattr") as session:
        fuse = session.client
        assert fuse is not None
        entry = fuse.lookup(ROOT_ID, "hello.txt")
        fuse.setxattr(entry.nodeid, "user.colour", b"blue")
        assert os.getxattr(share / "hello.txt", "user.colour") == b"blue"
        assert fuse.getxattr(entry.nodeid, "user.colour") == b"blue"
        assert fuse.getxattr_size(entry.nodeid, "user.colour") == 4
        assert b"user.colour" in fuse.listxattr(entry.nodeid)
        assert fuse.listxattr_size(entry.nodeid) >= len(b"user.colour\0")
        fuse.removexattr(entry.nodeid, "user.colour")
        with pytest.raises(FuseReplyError) as gone:
            fuse.getxattr(entry.nodeid, "user.colour")
        assert gone.value.errno == errno.ENODATA


@needs_reference
def test_xattr_requests_are_refused_without_xattr_flag(fuse: FuseClient) -> None:
    entry = fuse.lookup(ROOT_ID, "hello.txt")
    with pytest.raises(FuseReplyError) as refused:
        fuse.getxattr(entry.nodeid, "user.colour")
    assert refused.value.errno == errno.ENOSYS


@needs_reference
@needs_root
def test_requests_carry_the_guest_credentials(fuse: FuseClient, share: Path) -> None:
    """The reference creates files as the caller's uid/gid and checks ACCESS itself; other
    permission checks are left to the guest kernel, so those two are what we can observe."""
    os.chmod(share / "hello.txt", 0o600)
    hello = fuse.lookup(ROOT_ID, "hello.txt")
    with fuse.acting_as(1234, 4321):
        entry, handle = fuse.create(ROOT_ID, "owned", 0o644, os.O_RDWR | os.O_CREAT)
        fuse.release(entry.nodeid, handle.fh)
        fuse.mkdir(ROOT_ID, "owned-dir")
        with pytest.raises(FuseReplyError) as cannot_read:
            fuse.access(hello.nodeid, os.R_OK)
    for name in ("owned", "owned-dir"):
        host = os.lstat(share / name)
        assert (host.st_uid, host.st_gid) == (1234, 4321)
    assert cannot_read.value.errno == errno.EACCES
    fuse.access(hello.nodeid, os.R_OK)  # root again outside the block
    fuse.mkdir(ROOT_ID, "root-dir")
    assert os.lstat(share / "root-dir").st_uid == 0


@needs_reference
def test_many_requests_in_flight_complete_independently(fuse: FuseClient, share: Path) -> None:
    names = [f"f{index}" for index in range(24)]
    for index, name in enumerate(names):
        (share / name).write_bytes(bytes([index]) * (index + 1))
    tickets = [
        fuse.submit(Opcode.LOOKUP, ROOT_ID, os.fsencode(name) + b"\0", 128, kick=False)
        for name in names
    ]
    fuse.frontend.queues[1].kick()
    assert fuse.frontend.queues[1].in_flight == len(names)
    for name, ticket in reversed(list(zip(names, tickets, strict=True))):  # collect out of order
        error, payload = fuse.wait(ticket)
        assert error == 0
        assert_attr_matches(parse_entry(payload).attr, os.lstat(share / name))


@needs_reference
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"event_idx": True}, id="event-idx"),
        pytest.param({"split_descriptors": False}, id="contiguous-buffers"),
        pytest.param({"queue_size": 8, "vring_base": 65530}, id="index-wraparound"),
    ],
)
def test_ring_variants_carry_requests(share: Path, options: dict[str, object]) -> None:
    with reference(share, **options) as session:
        fuse = session.client
        assert fuse is not None
        for round_ in range(20):  # crosses 16-bit idx 65535 -> 0 and every slot of a small ring
            entry, handle = fuse.create(ROOT_ID, f"v{round_}", 0o644, os.O_RDWR | os.O_CREAT)
            assert fuse.write(entry.nodeid, handle.fh, 0, b"r%d" % round_) == len(b"r%d" % round_)
            fuse.release(entry.nodeid, handle.fh)
            assert (share / f"v{round_}").read_bytes() == b"r%d" % round_


@needs_reference
def test_several_memory_regions_are_translated(share: Path) -> None:
    memory = GuestMemory((1 << 16, 8 << 20, 8 << 20))  # rings in region 0, buffers beyond
    with reference(share, memory=memory) as session:
        fuse = session.client
        assert fuse is not None
        queue = fuse.frontend.queues[1]
        assert memory.region_of(queue.desc_gpa) is memory.regions[0]
        entry, handle = fuse.create(ROOT_ID, "regions", 0o644, os.O_RDWR | os.O_CREAT)
        fuse.write(entry.nodeid, handle.fh, 0, b"z" * 100_000)
        assert fuse.read(entry.nodeid, handle.fh, 0, 100_000) == b"z" * 100_000


@needs_reference
def test_hand_made_chain_is_served_and_bad_address_is_noticed(fuse: FuseClient) -> None:
    name = b"hello.txt\0"
    request_gpa, request = fuse.alloc_buffer(64)
    header = fuse.encode_in_header(Opcode.LOOKUP, ROOT_ID, len(name))
    request[: len(header) + len(name)] = header + name
    reply_gpa, reply = fuse.alloc_buffer(256)
    ticket = fuse.submit_descriptors(
        [
            RawDescriptor(request_gpa, len(header) + len(name), next=1),
            RawDescriptor(reply_gpa, 256, flags=VRING_DESC_F_WRITE),
        ]
    )
    assert fuse.wait_raw(ticket) == 16 + 128
    assert int.from_bytes(reply[4:8], "little", signed=True) == 0
    assert fuse.lookup(ROOT_ID, "hello.txt").nodeid == int.from_bytes(reply[16:24], "little")


@needs_reference
def test_lying_request_length_gets_an_error_reply(fuse: FuseClient) -> None:
    name = b"hello.txt\0"
    error, payload = fuse.request(Opcode.LOOKUP, ROOT_ID, name, 128, length=1 << 30)
    assert (error, payload) == (errno.ENOMEM, b"")  # the reference caps requests at ~1 MiB
    assert fuse.lookup(ROOT_ID, "hello.txt").nodeid > ROOT_ID, "and keeps serving"


@needs_reference
def test_daemon_dying_mid_request_fails_the_wait_instead_of_hanging(fuse: FuseClient) -> None:
    """The reference panics on a descriptor outside guest memory; we must notice, not hang."""
    request_gpa, request = fuse.alloc_buffer(64)
    header = fuse.encode_in_header(Opcode.GETATTR, ROOT_ID, 16)
    request[: len(header) + 16] = header + bytes(16)
    outside = fuse.frontend.memory.regions[-1].end + (1 << 30)  # type: ignore[union-attr]
    ticket = fuse.submit_descriptors(
        [
            RawDescriptor(request_gpa, len(header) + 16, next=1),
            RawDescriptor(outside, 256, flags=VRING_DESC_F_WRITE),
        ]
    )
    with pytest.raises(TimeoutError):
        fuse.wait_raw(ticket, timeout=1.0)
    assert fuse.frontend.wait_for_disconnect(timeout=5.0)


@needs_reference
def test_daemon_exits_when_the_frontend_disconnects(share: Path) -> None:
    with reference(share) as session:
        assert session.client is not None
        session.client.destroy()
        session.client.close()
        session.client = None
        assert session.process.wait(5) == 0


@needs_reference
@needs_root
def test_namespace_sandbox(share: Path) -> None:
    try:
        with reference(share, sandbox="namespace") as session:
            fuse = session.client
            assert fuse is not None
            assert_attr_matches(
                fuse.lookup(ROOT_ID, "hello.txt").attr, os.lstat(share / "hello.txt")
            )
            entry, handle = fuse.create(ROOT_ID, "from-sandbox", 0o644, os.O_RDWR | os.O_CREAT)
            fuse.write(entry.nodeid, handle.fh, 0, b"ns")
            fuse.release(entry.nodeid, handle.fh)
            assert (share / "from-sandbox").read_bytes() == b"ns"
    except DaemonStartError as err:
        pytest.skip(f"namespace sandbox unavailable here: {err}")


def test_backend_protocol_error_is_an_oserror() -> None:
    assert issubclass(BackendProtocolError, OSError)
    assert issubclass(FuseReplyError, OSError)
    assert FuseReplyError(errno.EPERM, Opcode.MKDIR).errno == errno.EPERM


@pytest.mark.skipif(not os.access(C_REFERENCE, os.X_OK), reason=f"{C_REFERENCE} not installed")
@needs_root
def test_c_reference_daemon_is_driven_too(share: Path) -> None:
    """libvhost-user and the QEMU 7.2 C daemon accept the same front-end (FUSE 7.36 there)."""
    command = [
        str(C_REFERENCE),
        "--socket-path={socket_path}",
        "-o",
        "source={shared_dir}",
        "-o",
        "sandbox=chroot",
    ]
    with running_daemon(command, share) as session:
        fuse = session.client
        assert fuse is not None and fuse.init_out is not None
        assert (fuse.init_out.major, fuse.init_out.minor) == (7, 36)
        assert_attr_matches(fuse.lookup(ROOT_ID, "hello.txt").attr, os.lstat(share / "hello.txt"))
        entry, handle = fuse.create(ROOT_ID, "c-made", 0o644, os.O_RDWR | os.O_CREAT)
        assert fuse.write(entry.nodeid, handle.fh, 0, b"from C") == 6
        fuse.release(entry.nodeid, handle.fh)
        assert (share / "c-made").read_bytes() == b"from C"
        assert set(fuse.listdir(ROOT_ID)) == {b".", b".."} | set(
            map(os.fsencode, os.listdir(share))
        )
