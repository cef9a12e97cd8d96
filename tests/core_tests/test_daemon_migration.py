"""Live migration through the Python front-end, QEMU's message order: a source daemon saves its
state after its rings stopped (GET_VRING_BASE), a destination daemon loads it before its rings
start, and the same node ids and file handles go on working there without a new INIT.  Also the
dirty log: with LOG_ALL on, the pages a reply lands in and the used ring are marked.

The Rust daemon is not run here: its device state is a postcard stream this daemon does not read
(docs/migration.md), so the save/load pair only makes sense between two of ours.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import pathlib
import struct

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseClient
from virtiofsd.testing.daemon import running_daemon
from virtiofsd.testing.frontend import VhostUserFrontend
from virtiofsd.testing.guest_memory import GuestMemory
from virtiofsd.vhost_user import messages as vu
from virtiofsd.vhost_user.messages import FrontendRequest as Req
from virtiofsd.vhost_user.messages import ProtocolFeature, VirtioFeature

from support.descriptors import path_fds
from support.mounts import mounted


BASE_FEATURES = VirtioFeature.VERSION_1 | VirtioFeature.PROTOCOL_FEATURES
NO_FD = 0x100


def transfer(frontend: VhostUserFrontend, direction: int, data: bytes = b"") -> tuple[bytes, bool]:
    """SET_DEVICE_STATE_FD + pipe + CHECK_DEVICE_STATE, as QEMU does it."""
    read_end, write_end = os.pipe()
    ours, theirs = (read_end, write_end) if direction == 0 else (write_end, read_end)
    payload = vu.encode_device_state_transfer(vu.DeviceStateTransfer(direction, 0))
    frontend.send(Req.SET_DEVICE_STATE_FD, payload, [theirs])
    os.close(theirs)
    reply, fds = frontend.receive_reply(Req.SET_DEVICE_STATE_FD)
    assert not fds and vu.decode_u64(reply) == NO_FD
    received = b""
    if direction == 0:
        while chunk := os.read(ours, 65536):
            received += chunk
    else:
        os.write(ours, data)
    os.close(ours)
    ok = vu.decode_u64(frontend.query(Req.CHECK_DEVICE_STATE)) == 0
    return received, ok


def save(client: FuseClient) -> bytes:
    frontend = client.frontend
    assert frontend.offered_protocol_features & ProtocolFeature.DEVICE_STATE
    for index in range(len(frontend.queues)):
        frontend.get_vring_base(index)
    data, ok = transfer(frontend, 0)
    assert ok
    return data


def load(socket_path: pathlib.Path, data: bytes) -> tuple[FuseClient | None, VhostUserFrontend]:
    """A destination front-end: negotiate, load, then start the rings; a client if it loaded."""
    frontend = VhostUserFrontend.connect(socket_path)
    frontend.negotiate()
    _, ok = transfer(frontend, 1, data)
    if not ok:
        return None, frontend
    frontend.set_features(BASE_FEATURES)
    frontend.set_mem_table(GuestMemory())
    for index in (0, 1):
        frontend.setup_queue(index, 128)
        frontend.set_vring_enable(index, True)
    return FuseClient(frontend), frontend


@pytest.fixture
def ours(command_of):
    """``ours(share, *options)``: our daemon, without a connected client."""

    def start(share: pathlib.Path, *extra: str):
        return running_daemon(command_of("ours", *extra), share, connect_client=False)

    return start


@pytest.fixture
def share(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"0123456789")
    (tmp_path / "gone").write_bytes(b"removed on the host")
    return tmp_path


def hold_files(client: FuseClient) -> dict[str, int]:
    d = client.lookup(ROOT_ID, "d").nodeid
    f = client.lookup(d, "f").nodeid
    gone = client.lookup(ROOT_ID, "gone").nodeid
    held = {"d": d, "f": f, "gone": gone,
            "f_fh": client.open(f, os.O_RDWR).fh,
            "d_fh": client.opendir(d).fh,
            "gone_fh": client.open(gone, os.O_RDONLY).fh}
    assert client.write(f, held["f_fh"], 0, b"before") == 6
    return held


def read_f_after_migration(client: FuseClient, destination, held: dict[str, int]) -> bytes:
    """Migrate ``client``'s state to ``destination`` and read the held file there."""
    moved, frontend = load(destination.socket_path, save(client))
    try:
        assert moved is not None, destination.log_text()
        return moved.read(held["f"], held["f_fh"], 0, 100)
    finally:
        frontend.close()
        client.close()


@pytest.mark.parametrize("mode", ["find-paths", "file-handles"])
def test_held_inodes_and_handles_carry_on_at_the_destination(ours, share, mode):
    with ours(share, "--migration-mode", mode) as source, \
            ours(share, "--migration-mode", mode, "--migration-on-error", "guest-error") as destination:
        client = source.connect()
        held = hold_files(client)
        (share / "gone").unlink()
        data = save(client)
        moved, frontend = load(destination.socket_path, data)
        try:
            assert moved is not None, destination.log_text()
            assert moved.read(held["f"], held["f_fh"], 0, 100) == b"before6789"
            assert moved.write(held["f"], held["f_fh"], 6, b"after") == 5
            assert {e.name for e in moved.readdir(held["d"], held["d_fh"])} >= {b"f"}
            assert moved.getattr(held["d"]).attr.ino == os.stat(share / "d").st_ino
            entry = moved.create(ROOT_ID, "created")[0]
            assert entry.nodeid not in held.values()
            if mode == "file-handles":
                assert moved.read(held["gone"], held["gone_fh"], 0, 100) == b"removed on the host"
            else:
                with pytest.raises(OSError) as failure:
                    moved.read(held["gone"], held["gone_fh"], 0, 100)
                assert failure.value.errno == errno.EBADF
        finally:
            frontend.close()
        client.close()
    assert (share / "d" / "f").read_bytes() == b"beforeafter"


def test_find_paths_falls_back_to_a_search_of_the_shared_folder(ours, share):
    """The name the guest used is gone (its /proc/self/fd link reads "... (deleted)"), but the
    inode has another name in the folder: the walk finds it.  The source holds descriptors
    (``never``): a handle-backed inode's link is made afresh and names the surviving alias."""
    with ours(share, "--inode-file-handles=never") as source, ours(share) as destination:
        client = source.connect()
        held = hold_files(client)
        (share / "elsewhere").mkdir()
        os.link(share / "d" / "f", share / "elsewhere" / "other-name")
        os.unlink(share / "d" / "f")
        assert read_f_after_migration(client, destination, held) == b"before6789"
        assert "searching the shared folder" in source.log_text()


def test_abort_refuses_a_state_with_a_lost_inode(ours, share):
    with ours(share) as source, \
            ours(share, "--migration-on-error", "abort") as destination:
        client = source.connect()
        hold_files(client)
        (share / "gone").unlink()
        data = save(client)
        moved, frontend = load(destination.socket_path, data)
        frontend.close()
        client.close()
        assert moved is None
        assert "--migration-on-error=abort" in destination.log_text()


def test_a_foreign_stream_fails_the_check_with_a_clear_reason(ours, share):
    with ours(share) as destination:
        moved, frontend = load(destination.socket_path, b"\x01\x00" + bytes(40))
        frontend.close()
        assert moved is None
        assert "not a pyvirtiofsd device state" in destination.log_text()


@pytest.mark.parametrize("verify", [True, False])
def test_verify_handles_detects_a_replaced_file(ours, share, verify):
    options = ["--migration-verify-handles"] if verify else []
    with ours(share, *options) as source, ours(share) as destination:
        client = source.connect()
        hold_ids = hold_files(client)
        data = save(client)
        # Between the switch-over and the destination's open, another inode takes the name.
        (share / "gone").unlink()
        (share / "gone").write_bytes(b"a new file under the old name")
        moved, frontend = load(destination.socket_path, data)
        held = moved is not None and moved.read(hold_ids["gone"], hold_ids["gone_fh"], 0, 100)
        frontend.close()
        client.close()
        if verify:
            assert moved is None
            assert "file handle differs" in destination.log_text()
        else:
            # Without the check the destination silently serves the other file: the hazard
            # the option exists for.
            assert held == b"a new file under the old name"


@pytest.mark.parametrize("destination_options, opens_handles", [
    (("--inode-file-handles=never",), False),
    (("--inode-file-handles=never", "--modcaps=+dac_read_search"), True),
])
def test_file_handles_at_a_destination_without_them(ours, share, destination_options,
                                                     opens_handles):
    """The source sends file handles; a destination whose options leave file handles off gets
    EOPNOTSUPP from the seccomp filter for open_by_handle_at and refuses the state cleanly (it
    is not killed).  The Rust README's option for such a destination, --modcaps=+dac_read_search,
    lets it open them."""
    with ours(share, "--migration-mode", "file-handles") as source, \
            ours(share, *destination_options) as destination:
        client = source.connect()
        held = hold_files(client)
        moved, frontend = load(destination.socket_path, save(client))
        try:
            if opens_handles:
                assert moved is not None, destination.log_text()
                assert moved.read(held["f"], held["f_fh"], 0, 100) == b"before6789"
            else:
                assert moved is None
                assert "Operation not supported" in destination.log_text()
                assert destination.process.poll() is None
        finally:
            frontend.close()
            client.close()


@pytest.mark.parametrize("confirm", [True, False])
def test_a_host_rename_before_the_switch_over_migrates_with_or_without_confirm_paths(
        ours, share, confirm):
    """Our source reads every path at the switch-over itself, so a rename made earlier is in
    the path already: --migration-confirm-paths has nothing to correct here."""
    options = ["--migration-confirm-paths"] if confirm else []
    with ours(share, *options) as source, ours(share) as destination:
        client = source.connect()
        held = hold_files(client)
        os.rename(share / "d" / "f", share / "d" / "renamed")
        assert read_f_after_migration(client, destination, held) == b"before6789"


@pytest.mark.parametrize("confirm", [True, False])
def test_confirm_paths_searches_again_for_a_file_whose_path_is_covered(ours, share, confirm):
    """A file mounted over d/f after the guest opened it: the kernel still names the held
    descriptor .../d/f, but that path now leads to the covering file.  With the option the
    source sees it and finds the file under its other name; without it the destination
    silently serves the covering file.  (``never`` on the source: the link is then the name
    the guest looked up, not whichever alias a file handle reopens.)"""
    (share / "covering").write_bytes(b"the file mounted over d/f")
    (share / "elsewhere").mkdir()
    options = ["--migration-confirm-paths"] if confirm else []
    with ours(share, "--inode-file-handles=never", *options) as source, \
            ours(share) as destination:
        client = source.connect()
        held = hold_files(client)
        os.link(share / "d" / "f", share / "elsewhere" / "other-name")
        with mounted(share / "d" / "f", "--bind", str(share / "covering")):
            moved_data = read_f_after_migration(client, destination, held)
        log = source.log_text()
    if confirm:
        assert moved_data == b"before6789"
        assert "leads to another inode now" in log
    else:
        assert moved_data == b"the file mounted over d/f"


# --- What the destination holds the migrated inodes as ---------------------------------------

#: More inodes than ``--rlimit-nofile 128`` leaves the guest descriptors for (128 less a
#: headroom of 64: 64).
MANY = 200
LOW_RLIMIT = ("--rlimit-nofile", "128")


def hold_many(client: FuseClient, share: pathlib.Path) -> tuple[int, dict[str, int]]:
    """Look up :data:`MANY` new files in a new folder ``many``: its node id, and the node id
    of each file by name."""
    (share / "many").mkdir()
    for index in range(MANY):
        (share / "many" / f"n{index}").write_bytes(b"%d" % index)
    folder = client.lookup(ROOT_ID, "many").nodeid
    return folder, {f"n{index}": client.lookup(folder, f"n{index}").nodeid
                    for index in range(MANY)}


@pytest.mark.parametrize("mode", ["find-paths", "file-handles"])
def test_a_prefer_destination_holds_migrated_inodes_as_file_handles(ours, share, mode):
    """The guest holds more inodes than the destination's descriptor budget: under ``prefer``
    (the default) each arrives as a file handle, as a lookup would make it, so the load
    succeeds, every inode is served and found again by a lookup, and the destination holds no
    descriptor for any of them."""
    with ours(share, "--migration-mode", mode) as source, \
            ours(share, *LOW_RLIMIT) as destination:
        client = source.connect()
        folder, held = hold_many(client, share)
        before = path_fds(destination.process.pid)
        moved, frontend = load(destination.socket_path, save(client))
        try:
            assert moved is not None, destination.log_text()
            for name, nodeid in held.items():
                assert moved.getattr(nodeid).attr.ino == os.stat(share / "many" / name).st_ino
            assert moved.lookup(folder, "n7").nodeid == held["n7"]
            assert moved.read(held["n7"], moved.open(held["n7"]).fh, 0, 10) == b"7"
            assert path_fds(destination.process.pid) == before, "a descriptor per inode"
            assert len(os.listdir(f"/proc/{destination.process.pid}/fd")) < MANY // 4
        finally:
            frontend.close()
        client.close()


@pytest.mark.parametrize("on_error", ["abort", "guest-error"])
def test_migrated_open_files_are_charged_to_the_descriptor_budget(ours, share, on_error):
    """Each open file the guest had is a descriptor on the destination, counted as an OPEN
    counts: past the budget, ``abort`` fails the load with ENFILE, ``guest-error`` answers
    EBADF for the open files that found no room and serves the others."""
    with ours(share) as source, \
            ours(share, *LOW_RLIMIT, "--migration-on-error", on_error) as destination:
        client = source.connect()
        _folder, held = hold_many(client, share)
        handles = {name: client.open(nodeid).fh for name, nodeid in held.items()}
        moved, frontend = load(destination.socket_path, save(client))
        try:
            assert "descriptor budget of 64 spent (a migrated open)" in destination.log_text()
            if on_error == "abort":
                assert moved is None
                return
            assert moved is not None, destination.log_text()
            served = failed = 0
            for name, nodeid in held.items():
                try:
                    assert moved.read(nodeid, handles[name], 0, 10) == name[1:].encode()
                    served += 1
                except OSError as err:
                    assert err.errno == errno.EBADF
                    failed += 1
            assert served == 64 and failed == MANY - 64
        finally:
            frontend.close()
        client.close()


def test_a_never_destination_holds_migrated_inodes_as_descriptors(ours, share):
    """``never`` keeps one descriptor per migrated inode, charged to the budget: with room for
    them the destination holds them all; without, the load fails with ENFILE (``abort``)."""
    with ours(share) as source, \
            ours(share, "--inode-file-handles=never", *LOW_RLIMIT) as cramped, \
            ours(share, "--inode-file-handles=never") as roomy:
        client = source.connect()
        _folder, held = hold_many(client, share)
        data = save(client)
        refused, frontend = load(cramped.socket_path, data)
        frontend.close()
        assert refused is None
        assert "descriptor budget of 64 spent (a migrated inode)" in cramped.log_text()
        before = path_fds(roomy.process.pid)
        moved, frontend = load(roomy.socket_path, data)
        try:
            assert moved is not None, roomy.log_text()
            for name, nodeid in held.items():
                assert moved.getattr(nodeid).attr.ino == os.stat(share / "many" / name).st_ino
            assert path_fds(roomy.process.pid) - before >= MANY
        finally:
            frontend.close()
        client.close()


@pytest.mark.parametrize("store", ["prefer", "mandatory"])
def test_a_migrated_inode_on_a_file_system_without_handles(ours, share, store):
    """An inode of a procfs under the share (no file handles) arrives as a lookup would take
    it: ``prefer`` holds it as a descriptor; ``mandatory`` refuses it (EOPNOTSUPP), which
    fails the load under ``abort``."""
    point = share / "proc"
    point.mkdir()
    with mounted(point, "-t", "proc", "proc"), ours(share) as source, \
            ours(share, f"--inode-file-handles={store}") as destination:
        client = source.connect()
        held = hold_files(client)
        proc = client.lookup(ROOT_ID, "proc").nodeid
        before = path_fds(destination.process.pid)
        moved, frontend = load(destination.socket_path, save(client))
        try:
            if store == "mandatory":
                assert moved is None
                assert (f"node {proc} cannot be held here: [Errno {errno.EOPNOTSUPP}]"
                        in destination.log_text())
                return
            assert moved is not None, destination.log_text()
            assert path_fds(destination.process.pid) == before + 1, "one descriptor: proc"
            assert moved.lookup(proc, "self").nodeid > 0
            assert moved.read(held["f"], held["f_fh"], 0, 6) == b"before"
        finally:
            frontend.close()
            client.close()


def logged_pages(bitmap: memoryview) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(bitmap) if byte for b in range(8) if byte >> b & 1}


def test_dirty_log_marks_reply_pages_and_the_used_ring_only_while_log_all_is_on(ours, share):
    (share / "pattern").write_bytes(b"\xa5\x5a" * 2048)
    with ours(share) as source:
        client = source.connect()
        frontend = client.frontend
        memory = frontend.memory
        region = memory.regions[0]
        log_size = (region.end // 4096 + 7) // 8
        log_fd = os.memfd_create("dirty-log")
        os.ftruncate(log_fd, log_size)
        bitmap = memoryview(mmap.mmap(log_fd, log_size))
        frontend.send(Req.SET_LOG_BASE, vu.encode_log(vu.LogArea(log_size, 0)), [log_fd])
        os.close(log_fd)
        reply, _fds = frontend.receive_reply(Req.SET_LOG_BASE)
        assert reply == b""
        node = client.lookup(ROOT_ID, "pattern").nodeid
        fh = client.open(node).fh
        client.read(node, fh, 0, 4096)
        assert logged_pages(bitmap) == set(), "pages marked while LOG_ALL is off"
        frontend.set_features(BASE_FEATURES | VirtioFeature.LOG_ALL)
        bitmap[:] = bytes(log_size)
        assert client.read(node, fh, 0, 4096) == b"\xa5\x5a" * 2048
        data_gpa = region.guest_phys_addr + bytes(region.view).rindex(b"\xa5\x5a" * 2048)
        pages = logged_pages(bitmap)
        assert data_gpa // 4096 in pages
        assert frontend.queues[1].used_gpa // 4096 in pages
        frontend.set_features(BASE_FEATURES)
        client.close()


# --- Locks travel with the guest (state format version 2, owners' handles since 3) ----------------------------------

RD, WR, UN = 0, 1, 2
EOF_END = (1 << 63) - 1
WRITER, READER = 0xA11CE, 0xB0B


def host_lock_conflict(path: pathlib.Path, lock_type: int, start: int = 0,
                       length: int = 0) -> tuple[int, int, int] | None:
    """What a host process's F_OFD_GETLK finds held against ``lock_type`` over the range:
    (type, start, length) of the lock, or None."""
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack("hhqqi4x", lock_type, os.SEEK_SET, start, length, 0)
        found = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))
        return None if found[0] == fcntl.F_UNLCK else (found[0], found[2], found[3])
    finally:
        os.close(fd)


def host_can_flock(path: pathlib.Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def take_locks(client: FuseClient) -> dict[str, int]:
    """A guest process (owner WRITER, pid 4242) write-locks bytes 0..9 and read-locks 20..EOF
    of d/f; another open of it holds an exclusive flock."""
    held = hold_files(client)
    held["flock_fh"] = client.open(held["f"], os.O_RDONLY).fh
    client.setlk(held["f"], held["f_fh"], WRITER, 0, 9, WR, pid=4242)
    client.setlk(held["f"], held["f_fh"], WRITER, 20, EOF_END, RD, pid=4242)
    client.setlk(held["f"], held["flock_fh"], 0, lock_type=WR, flock=True)
    return held


def test_held_locks_move_to_the_destination(ours, share):
    """The source lets go of its host locks once saved; the destination holds them, as a host
    process sees, reports the holder's guest pid, and lets the guest unlock them."""
    path = share / "d" / "f"
    locks = ("-o", "posix_lock,flock")
    with ours(share, *locks) as source, ours(share, *locks) as destination:
        client = source.connect()
        held = take_locks(client)
        assert host_lock_conflict(path, WR, 0, 10) == (WR, 0, 10)
        data = save(client)
        assert host_lock_conflict(path, WR) is None and host_can_flock(path)
        moved, frontend = load(destination.socket_path, data)
        try:
            assert moved is not None, destination.log_text()
            assert host_lock_conflict(path, WR, 0, 10) == (WR, 0, 10)
            assert host_lock_conflict(path, RD, 20, 0) is None
            assert host_lock_conflict(path, WR, 20, 0) == (RD, 20, 0)
            assert not host_can_flock(path)
            other = moved.getlk(held["f"], held["f_fh"], READER, 0, 5, WR)
            assert (other.lock_type, other.start, other.end, other.pid) == (WR, 0, 9, 4242)
            moved.setlk(held["f"], held["f_fh"], WRITER, 0, EOF_END, UN)
            moved.setlk(held["f"], held["flock_fh"], 0, lock_type=UN, flock=True)
            assert host_lock_conflict(path, WR) is None and host_can_flock(path)
        finally:
            frontend.close()
        client.close()


def test_an_open_file_lock_moved_goes_when_its_file_is_released(ours, share):
    """A guest ``F_OFD_SETLK`` names the open file as the owner; Linux sends no FLUSH and no
    unlock for it, only RELEASE at the last close.  The destination knows which open file the
    owner locked through, so releasing that file there lets the host lock go, as it would
    have on the source."""
    path = share / "d" / "f"
    open_file_owner = 0xF11E
    with ours(share, "-o", "posix_lock") as source, \
            ours(share, "-o", "posix_lock") as destination:
        client = source.connect()
        held = hold_files(client)
        client.setlk(held["f"], held["f_fh"], open_file_owner, 0, 9, WR, pid=7)
        moved, frontend = load(destination.socket_path, save(client))
        try:
            assert moved is not None, destination.log_text()
            assert host_lock_conflict(path, WR, 0, 10) == (WR, 0, 10)
            moved.release(held["f"], held["f_fh"])
            assert host_lock_conflict(path, WR) is None
        finally:
            frontend.close()
        client.close()


@pytest.mark.parametrize("on_error", ["abort", "guest-error"])
def test_a_lock_taken_on_the_host_during_the_switch_over(ours, share, on_error):
    """A host process takes the range and the flock between the source's release and the
    destination's load.  ``abort``: the load fails, and the source, whose rings start again,
    takes its locks back once the host lets go.  ``guest-error``: the destination runs without
    them, and the owner's lock requests on the file get EIO until it closes it (FLUSH; for the
    flock, RELEASE); other owners are served."""
    path = share / "d" / "f"
    locks = ("-o", "posix_lock,flock")
    with ours(share, *locks) as source, \
            ours(share, *locks, "--migration-on-error", on_error) as destination:
        client = source.connect()
        held = take_locks(client)
        data = save(client)
        host_fd = os.open(path, os.O_RDWR)
        try:
            fcntl.fcntl(host_fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", WR, 0, 5, 1, 0))
            fcntl.flock(host_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            moved, frontend = load(destination.socket_path, data)
            if on_error == "abort":
                frontend.close()
                assert moved is None
                assert "cannot be taken again" in destination.log_text()
                os.close(host_fd)
                host_fd = -1
                for index in (0, 1):
                    client.frontend.setup_queue(index, 128)
                    client.frontend.set_vring_enable(index, True)
                resumed = FuseClient(client.frontend)
                assert host_lock_conflict(path, WR, 0, 10) == (WR, 0, 10)
                assert not host_can_flock(path)
                assert resumed.read(held["f"], held["f_fh"], 0, 6) == b"before"
                resumed.setlk(held["f"], held["f_fh"], WRITER, 0, EOF_END, UN)
                assert host_lock_conflict(path, WR, 0, 10) is None
                return
            try:
                assert moved is not None, destination.log_text()
                for call in (lambda: moved.setlk(held["f"], held["f_fh"], WRITER, 0, 9, UN),
                             lambda: moved.getlk(held["f"], held["f_fh"], WRITER, 0, 9, WR),
                             lambda: moved.setlk(held["f"], held["flock_fh"], 0, lock_type=UN,
                                                 flock=True)):
                    with pytest.raises(OSError) as failure:
                        call()
                    assert failure.value.errno == errno.EIO
                with pytest.raises(OSError) as failure:
                    moved.setlk(held["f"], held["f_fh"], READER, 5, 5, WR)
                assert failure.value.errno == errno.EAGAIN
                assert moved.read(held["f"], held["f_fh"], 0, 6) == b"before"
                moved.flush(held["f"], held["f_fh"], WRITER)
                moved.release(held["f"], held["flock_fh"])
                os.close(host_fd)
                host_fd = -1
                moved.setlk(held["f"], held["f_fh"], WRITER, 0, 9, WR, pid=4242)
                assert host_lock_conflict(path, WR, 0, 10) == (WR, 0, 10)
            finally:
                frontend.close()
        finally:
            if host_fd >= 0:
                os.close(host_fd)
        client.close()
