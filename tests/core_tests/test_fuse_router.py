"""The FUSE router, driven with descriptor chains built in memory and the fake memfs plugin."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading

import pytest

from fakes.answering import serve_by_answer
from fakes.memfs import MemFs
from virtiofsd import hookimpl
from virtiofsd.config import Config
from virtiofsd.deferred import Deferred
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EMPTY
from virtiofsd.fuse.router import FuseRouter
from virtiofsd.manager import make_plugin_manager

Op = abi.Opcode
F = abi.InitFlag
CONFIG = Config(shared_dir="/srv")
OFFER = F.ASYNC_READ | F.BIG_WRITES | F.MAX_PAGES | F.DO_READDIRPLUS | F.INIT_EXT


class Guest:
    """Plays the guest kernel: lays requests out as Linux does and checks every reply header.

    Every test runs twice (the ``serve_mode`` fixture): requests go to ``handle_chain``, or
    through ``answer`` as the compiled worker sends them, which must answer the same."""

    mode = "handle_chain"

    def __init__(self, router: FuseRouter) -> None:
        self.router = router
        self.uniques = itertools.count(2, 2)

    def send(self, opcode: int, args: bytes = b"", *, nodeid: int = abi.ROOT_ID,
             out: int = 4096, pieces: tuple[bytes, ...] = (), queue: int = 1,
             header_length: int | None = None, total_extlen: int = 0):
        """One request; ``pieces`` are extra readable buffers (WRITE pages).

        :returns: (bytes written, writable buffers, unique).
        """
        unique = next(self.uniques)
        length = abi.IN_HEADER.size + len(args) + sum(map(len, pieces))
        header = abi.IN_HEADER.pack(header_length or length, opcode, unique, nodeid, 1000, 1000,
                                    77, total_extlen, 0)
        readable = [memoryview(bytearray(header))]
        if args:
            readable.append(memoryview(bytearray(args)))
        readable += [memoryview(bytearray(piece)) for piece in pieces]
        writable = [memoryview(bytearray(16)), memoryview(bytearray(out))] if out else []
        if self.mode == "answer":
            written = serve_by_answer(self.router, queue, readable, writable)
        else:
            written = self.router.handle_chain(queue, readable, writable)
        return written, writable, unique

    def call(self, opcode: int, args: bytes = b"", **kwargs) -> tuple[int, bytes]:
        """A request that must be answered: returns (errno, body)."""
        written, writable, unique = self.send(opcode, args, **kwargs)
        assert written >= 16
        reply = b"".join(bytes(view) for view in writable)[:written]
        length, error, reply_unique = abi.OUT_HEADER.unpack_from(reply)
        assert (length, reply_unique) == (written, unique)
        assert error <= 0
        assert error == 0 or length == 16
        return -error, reply[16:]

    def ok(self, opcode: int, args: bytes = b"", **kwargs) -> bytes:
        error, body = self.call(opcode, args, **kwargs)
        assert error == 0, os.strerror(error)
        return body

    def init(self, major: int = 7, minor: int = 38, flags: int = OFFER,
             flags2: int = 0) -> tuple[int, bytes]:
        return self.call(Op.INIT, abi.INIT_IN.pack(major, minor, 65536, flags, flags2))

    def lookup(self, name: bytes, parent: int = abi.ROOT_ID) -> tuple[int, bytes]:
        return self.call(Op.LOOKUP, name + b"\0", nodeid=parent)

    def create(self, name: bytes, parent: int = abi.ROOT_ID) -> tuple[int, int]:
        body = self.ok(Op.CREATE, abi.CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o644, 0o022, 0)
                       + name + b"\0", nodeid=parent)
        nodeid = abi.ENTRY_OUT.unpack_from(body)[0]
        fh = abi.OPEN_OUT.unpack_from(body, abi.ENTRY_OUT.size)[0]
        return nodeid, fh


@pytest.fixture(autouse=True, params=["handle_chain", "answer"])
def serve_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(Guest, "mode", request.param)
    return request.param


@pytest.fixture
def memfs() -> MemFs:
    return MemFs()


@pytest.fixture
def router(memfs: MemFs) -> FuseRouter:
    return FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs]), CONFIG)


@pytest.fixture
def guest(router: FuseRouter) -> Guest:
    return Guest(router)


@pytest.fixture
def mounted(guest: Guest) -> Guest:
    error, _body = guest.init()
    assert error == 0
    return guest


# --- INIT, DESTROY, reset -----------------------------------------------------------------------


def test_requests_before_init_get_eio(guest, memfs):
    assert guest.lookup(b"x") == (errno.EIO, b"")
    assert guest.call(Op.DESTROY) == (errno.EIO, b"")
    assert guest.send(Op.FORGET, abi.FORGET_IN.pack(1), out=0, queue=0)[0] == 0
    assert memfs.calls == []


def test_init_negotiates_and_tells_the_plugin(guest, router, memfs):
    error, body = guest.init()
    assert error == 0
    major, minor, readahead, flags = abi.INIT_OUT.unpack(body)[:4]
    assert (major, minor, readahead) == (7, 38, 65536)
    assert flags == OFFER
    assert router.session.initialized
    assert memfs.sessions == [router.session]
    assert guest.lookup(b"missing")[0] == errno.ENOENT


def test_init_with_an_old_protocol_is_refused_and_nothing_is_served(guest, router, memfs):
    assert guest.init(7, 26) == (errno.EPROTO, b"")
    assert not router.session.initialized
    assert memfs.sessions == []
    assert guest.lookup(b"x")[0] == errno.EIO


def test_a_newer_major_gets_the_version_then_a_second_init_mounts(guest, router, memfs):
    error, body = guest.init(8, 1)
    assert error == 0
    assert abi.INIT_OUT.unpack(body)[:4] == (7, 38, 0, 0)
    assert not router.session.initialized
    assert memfs.sessions == []
    assert guest.init()[0] == 0
    assert router.session.initialized


def test_a_second_init_resets_the_session(mounted, router, memfs):
    mounted.create(b"file")
    first = router.session
    assert mounted.init()[0] == 0
    assert memfs.destroyed == 1
    assert router.session is not first and router.session.initialized
    assert mounted.lookup(b"file")[0] == errno.ENOENT


def test_a_malformed_init_gets_einval_and_keeps_the_session(mounted, router, memfs):
    session = router.session
    error, _body = mounted.call(Op.INIT, abi.INIT_IN_COMPAT.pack(7, 38, 0, F.INIT_EXT))
    assert error == errno.EINVAL
    assert router.session is session
    assert memfs.destroyed == 0


def test_a_plugin_refusing_init_leaves_the_device_uninitialized(memfs):
    class Refuse:
        @hookimpl(tryfirst=True)
        def virtiofsd_fuse_init(self, req, session):
            raise FuseError(errno.EPROTO, "flags not acceptable")

    router = FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs, Refuse()]),
                        CONFIG)
    guest = Guest(router)
    assert guest.init() == (errno.EPROTO, b"")
    assert not router.session.initialized
    assert guest.lookup(b"x")[0] == errno.EIO


def test_without_any_plugin_init_is_accepted_and_requests_get_enosys():
    guest = Guest(FuseRouter(make_plugin_manager(load_entry_points=False), CONFIG))
    assert guest.init()[0] == 0
    assert guest.router.session.initialized
    assert guest.lookup(b"x") == (errno.ENOSYS, b"")
    assert guest.call(Op.DESTROY) == (0, b"")


def test_destroy_replies_ok_and_ends_the_session(mounted, router, memfs):
    assert mounted.call(Op.DESTROY) == (0, b"")
    assert memfs.destroyed == 1
    assert not router.session.initialized
    assert mounted.lookup(b"x")[0] == errno.EIO


def test_reset_destroys_once_and_waits_for_init(mounted, router, memfs):
    router.reset()
    assert memfs.destroyed == 1
    assert not router.session.initialized
    router.reset()
    assert memfs.destroyed == 1
    assert mounted.lookup(b"x")[0] == errno.EIO
    assert mounted.init()[0] == 0


def test_reset_survives_a_failing_destroy_hook(memfs, caplog):
    class Broken:
        @hookimpl(tryfirst=True)
        def virtiofsd_fuse_destroy(self, req):
            raise RuntimeError("plugin bug")

    router = FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs, Broken()]),
                        CONFIG)
    Guest(router).init()
    router.reset()
    assert not router.session.initialized
    assert "plugin bug" in caplog.text


# --- Dispatch -----------------------------------------------------------------------------------


def test_create_write_read_round_trip(mounted, memfs):
    nodeid, fh = mounted.create(b"data.bin")
    payload = bytes(range(256)) * 40
    pages = (payload[:4096], payload[4096:8192], payload[8192:])
    body = mounted.ok(Op.WRITE, abi.WRITE_IN.pack(fh, 0, len(payload), 0, 0, os.O_RDWR, 0),
                      nodeid=nodeid, pieces=pages, out=8)
    assert abi.WRITE_OUT.unpack(body) == (len(payload), 0)
    assert memfs.calls[-1] == ("write", {"nodeid": nodeid, "fh": fh, "offset": 0,
                                         "size": len(payload), "write_flags": 0,
                                         "flags": os.O_RDWR, "pieces": 3})
    written, writable, _unique = mounted.send(
        Op.READ, abi.READ_IN.pack(fh, 100, 5000, 0, 0, 0, 0), nodeid=nodeid, out=8192)
    assert written == 16 + 5000
    assert abi.OUT_HEADER.unpack(writable[0])[:2] == (16 + 5000, 0)
    assert bytes(writable[1][:5000]) == payload[100:5100]


def test_read_with_the_reply_header_split_over_buffers(mounted):
    nodeid, fh = mounted.create(b"f")
    mounted.ok(Op.WRITE, abi.WRITE_IN.pack(fh, 0, 5, 0, 0, 0, 0) + b"abcde", nodeid=nodeid)
    header = abi.IN_HEADER.pack(80, Op.READ, 99, nodeid, 0, 0, 0, 0, 0)
    readable = [memoryview(bytearray(header + abi.READ_IN.pack(fh, 0, 5, 0, 0, 0, 0)))]
    writable = [memoryview(bytearray(10)), memoryview(bytearray(12))]
    assert mounted.router.handle_chain(1, readable, writable) == 21
    reply = bytes(writable[0]) + bytes(writable[1])
    assert abi.OUT_HEADER.unpack_from(reply) == (21, 0, 99)
    assert reply[16:21] == b"abcde"


def test_read_into_a_short_buffer_reads_what_fits(mounted):
    nodeid, fh = mounted.create(b"f")
    mounted.ok(Op.WRITE, abi.WRITE_IN.pack(fh, 0, 100, 0, 0, 0, 0) + bytes(100), nodeid=nodeid)
    written, writable, _unique = mounted.send(
        Op.READ, abi.READ_IN.pack(fh, 0, 100, 0, 0, 0, 0), nodeid=nodeid, out=10)
    assert written == 26
    assert abi.OUT_HEADER.unpack(writable[0])[0] == 26


def test_lookup_mkdir_readdir_getattr(mounted):
    entry = mounted.ok(Op.MKDIR, abi.MKDIR_IN.pack(0o750, 0) + b"sub\0")
    nodeid = abi.ENTRY_OUT.unpack_from(entry)[0]
    error, body = mounted.lookup(b"sub")
    assert error == 0 and abi.ENTRY_OUT.unpack_from(body)[0] == nodeid
    attr = abi.ATTR_OUT.unpack(mounted.ok(Op.GETATTR, abi.GETATTR_IN.pack(0, 0, 0),
                                          nodeid=nodeid))
    assert stat.S_ISDIR(attr[3 + 9]) and stat.S_IMODE(attr[3 + 9]) == 0o750
    fh = abi.OPEN_OUT.unpack(mounted.ok(Op.OPENDIR, abi.OPEN_IN.pack(0, 0)))[0]
    listing = mounted.ok(Op.READDIR, abi.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))
    names = []
    while listing:
        _ino, _off, namelen, _type = abi.DIRENT.unpack_from(listing)
        names.append(listing[abi.DIRENT.size:abi.DIRENT.size + namelen])
        listing = listing[abi.dirent_size(namelen):]
    assert names == [b".", b"..", b"sub"]


def test_symlink_readlink_rename_unlink(mounted, memfs):
    entry = mounted.ok(Op.SYMLINK, b"ln\0/some/where\0")
    nodeid = abi.ENTRY_OUT.unpack_from(entry)[0]
    assert mounted.ok(Op.READLINK, nodeid=nodeid) == b"/some/where"
    assert mounted.ok(Op.RENAME2, abi.RENAME2_IN.pack(abi.ROOT_ID, 1, 0) + b"ln\0ln2\0") == b""
    assert memfs.calls[-1][1]["flags"] == 1
    assert mounted.ok(Op.RENAME, abi.RENAME_IN.pack(abi.ROOT_ID) + b"ln2\0ln3\0") == b""
    assert memfs.calls[-1][1]["flags"] == 0
    assert mounted.ok(Op.UNLINK, b"ln3\0") == b""
    assert mounted.lookup(b"ln3")[0] == errno.ENOENT


def test_statfs_encodes_the_reply_object(mounted):
    fields = abi.KSTATFS.unpack(mounted.ok(Op.STATFS))
    assert fields[:6] == (1000, 500, 500, 100, 50, 4096)


def test_forgets_are_served_without_a_reply(mounted, memfs):
    nodeid, _fh = mounted.create(b"f")
    assert mounted.send(Op.FORGET, abi.FORGET_IN.pack(1), nodeid=nodeid, out=0, queue=0)[0] == 0
    batch = abi.BATCH_FORGET_IN.pack(2, 0) + abi.FORGET_ONE.pack(nodeid, 5) \
        + abi.FORGET_ONE.pack(999, 1)
    assert mounted.send(Op.BATCH_FORGET, batch, out=0, queue=0)[0] == 0
    assert ("forget", {"nodeid": nodeid, "nlookup": 1}) in memfs.calls
    assert ("batch_forget", {"forgets": [(nodeid, 5), (999, 1)]}) in memfs.calls
    assert mounted.send(Op.INTERRUPT, abi.INTERRUPT_IN.pack(4), out=16, queue=0)[0] == 0


def test_notify_reply_gets_no_reply(mounted, memfs):
    """NOTIFY_REPLY answers a notification; the daemon sends none, and it is never answered."""
    written, writable, _unique = mounted.send(Op.NOTIFY_REPLY, bytes(64), out=64)
    assert written == 0
    assert bytes(writable[0]) == bytes(16)


def test_malformed_forgets_get_no_reply_either(mounted, memfs, caplog):
    batch = abi.BATCH_FORGET_IN.pack(1000, 0)
    assert mounted.send(Op.BATCH_FORGET, batch, out=16, queue=0)[0] == 0
    assert mounted.send(Op.FORGET, b"", out=16, queue=0)[0] == 0
    assert not [call for call in memfs.calls if "forget" in call[0]]
    assert "BATCH_FORGET" in caplog.text


# --- Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [Op.GETLK, Op.SETLK, Op.SETLKW, Op.BMAP, Op.IOCTL, Op.POLL,
                                    Op.SETUPMAPPING, Op.REMOVEMAPPING,
                                    Op.STATX, 0, 99, 4096, 0xFFFFFFFF])
def test_opcodes_nobody_serves_get_enosys(mounted, opcode):
    assert mounted.call(opcode, bytes(64)) == (errno.ENOSYS, b"")


def test_tmpfile_without_an_implementation_gets_enosys(mounted):
    args = abi.CREATE_IN.pack(os.O_RDWR | os.O_TMPFILE, 0o600, 0o022, 0) + b"/\0"
    assert mounted.call(Op.TMPFILE, args) == (errno.ENOSYS, b"")


def test_hooks_without_an_implementation_get_enosys(mounted, memfs):
    assert mounted.call(Op.FALLOCATE, abi.FALLOCATE_IN.pack(1, 0, 10, 0, 0)) == (errno.ENOSYS,
                                                                                   b"")
    assert mounted.call(Op.LSEEK, abi.LSEEK_IN.pack(1, 0, 3, 0)) == (errno.ENOSYS, b"")


class Failing:
    """Hook implementations that fail in the ways the router must translate."""

    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_lookup(self, req, parent, name):
        if name == b"oserror":
            raise PermissionError(errno.EACCES, "no", name)
        if name == b"noerrno":
            raise OSError("without errno")
        if name == b"bug":
            raise KeyError("plugin bug")
        if name == b"junk":
            return 42
        if name == b"huge":
            return bytes(1 << 16)
        return None

    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_read(self, req, nodeid, fh, offset, size, flags, sink):
        if fh == 666:
            return size + 1000
        if fh == 777:
            return b"plain bytes"
        return None


@pytest.fixture
def failing(memfs) -> Guest:
    pm = make_plugin_manager(load_entry_points=False, plugins=[memfs, Failing()])
    guest = Guest(FuseRouter(pm, CONFIG))
    assert guest.init()[0] == 0
    return guest


def test_exceptions_map_to_errno(failing, caplog):
    assert failing.lookup(b"oserror")[0] == errno.EACCES
    assert failing.lookup(b"noerrno")[0] == errno.EIO
    assert failing.lookup(b"missing")[0] == errno.ENOENT
    assert not caplog.records
    assert failing.lookup(b"bug")[0] == errno.EIO
    assert "plugin bug" in caplog.text and "Traceback" in caplog.text


def test_a_result_that_is_not_a_reply_is_eio(failing, caplog):
    assert failing.lookup(b"junk")[0] == errno.EIO
    assert "not a reply" in caplog.text


def test_a_reply_larger_than_the_guest_buffer_is_erange(failing, caplog):
    assert failing.call(Op.LOOKUP, b"huge\0", out=100) == (errno.ERANGE, b"")
    assert "does not fit" in caplog.text


def test_a_read_claiming_more_than_it_was_given_is_eio(failing, caplog):
    args = abi.READ_IN.pack(666, 0, 100, 0, 0, 0, 0)
    assert failing.call(Op.READ, args, out=4096) == (errno.EIO, b"")
    assert "READ" in caplog.text


def test_a_read_may_return_bytes(failing):
    assert failing.ok(Op.READ, abi.READ_IN.pack(777, 0, 100, 0, 0, 0, 0)) == b"plain bytes"


@pytest.mark.parametrize("args", [
    b"no terminator",
    b"two\0names\0",
])
def test_malformed_requests_get_einval_and_serving_goes_on(mounted, args, caplog):
    assert mounted.call(Op.LOOKUP, args) == (errno.EINVAL, b"")
    assert "malformed LOOKUP" in caplog.text
    assert mounted.lookup(b"still-works")[0] == errno.ENOENT


def test_a_header_lying_about_the_length_gets_einval(mounted):
    assert mounted.call(Op.LOOKUP, b"x\0", header_length=4000) == (errno.EINVAL, b"")
    assert mounted.call(Op.LOOKUP, b"x\0", header_length=20) == (errno.EINVAL, b"")


def test_a_request_too_large_gets_enomem(mounted):
    error, _body = mounted.call(Op.LOOKUP, b"x\0", header_length=abi.MAX_REQUEST_SIZE + 8)
    assert error == errno.ENOMEM


def test_a_chain_without_a_header_gets_no_reply(router, caplog):
    writable = [memoryview(bytearray(64))]
    assert router.handle_chain(1, [memoryview(bytearray(20))], writable) == 0
    assert router.handle_chain(1, [], writable) == 0
    assert bytes(writable[0]) == bytes(64)
    assert "without a FUSE header" in caplog.text


def test_a_chain_without_room_for_a_reply_writes_nothing(mounted):
    assert mounted.send(Op.LOOKUP, b"x\0", out=0)[0] == 0


# --- Logging and concurrency --------------------------------------------------------------------


def test_debug_logging_names_each_request(memfs, caplog):
    caplog.set_level(logging.DEBUG, logger="virtiofsd.fuse.router")
    router = FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs]), CONFIG)
    guest = Guest(router)
    guest.init()
    guest.lookup(b"x", parent=1)
    assert any("LOOKUP" in record.getMessage() and "nodeid=1" in record.getMessage()
               for record in caplog.records)


def test_no_debug_lines_when_debug_is_off(memfs, caplog):
    caplog.set_level(logging.INFO, logger="virtiofsd.fuse.router")
    guest = Guest(FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs]),
                             CONFIG))
    guest.init()
    guest.lookup(b"x")
    assert not [record for record in caplog.records if record.levelno == logging.DEBUG]


def test_hiprio_and_request_queues_run_concurrently(mounted, memfs):
    nodeid, _fh = mounted.create(b"shared")
    errors: list[BaseException] = []

    def forget_loop() -> None:
        try:
            forgetter = Guest(mounted.router)
            for _ in range(300):
                assert forgetter.send(Op.FORGET, abi.FORGET_IN.pack(1), nodeid=nodeid, out=0,
                                      queue=0)[0] == 0
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=forget_loop)
    thread.start()
    requester = Guest(mounted.router)
    for _ in range(300):
        error, body = requester.lookup(b"shared")
        assert error == 0 and abi.ENTRY_OUT.unpack_from(body)[0] == nodeid
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not errors
    assert sum(1 for name, _kwargs in memfs.calls if name == "forget") == 300


# --- Deferred replies and FUSE_INTERRUPT --------------------------------------------------------


class Waiting:
    """A SETLKW implementation that waits until the test resolves it or it is cancelled."""

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    @hookimpl
    def virtiofsd_fuse_setlk(self, req, nodeid, fh, owner, start, end, lock_type, pid, lk_flags,
                             sleep):
        if not sleep:
            return EMPTY
        holder: list[Deferred] = []

        def cancel() -> None:
            holder[0].resolve(FuseError(errno.EINTR, "interrupted"))

        deferred = Deferred(cancel=cancel)
        holder.append(deferred)
        self.pending.append(deferred)
        return deferred


@pytest.fixture
def waiting(memfs) -> tuple[Guest, Waiting]:
    plugin = Waiting()
    guest = Guest(FuseRouter(make_plugin_manager(load_entry_points=False,
                                                 plugins=[memfs, plugin]), CONFIG))
    assert guest.init()[0] == 0
    return guest, plugin


LK = abi.LK_IN.pack(1, 7, 0, 9, 1, 77, 0, 0)


def _reply_of(deferred: Deferred, writable) -> tuple[int, int]:
    """(written, errno) once ``deferred`` (the router's byte count) has resolved."""
    result: list[int] = []
    deferred.add_callback(result.append)
    assert result, "the deferred reply has not resolved"
    written = result[0]
    _length, error, _unique = abi.OUT_HEADER.unpack_from(bytes(writable[0]))
    return written, -error


def test_a_deferred_reply_is_written_when_the_hook_resolves(waiting):
    guest, plugin = waiting
    deferred, writable, unique = guest.send(Op.SETLKW, LK)
    assert isinstance(deferred, Deferred) and not deferred.done
    assert bytes(writable[0]) == bytes(16), "nothing is written before the answer"
    assert guest.ok(Op.STATFS), "other requests are served meanwhile"
    plugin.pending[0].resolve(EMPTY)
    assert _reply_of(deferred, writable) == (16, 0)
    assert abi.OUT_HEADER.unpack_from(bytes(writable[0]))[2] == unique


def test_a_deferred_error_is_answered_as_an_errno(waiting):
    guest, plugin = waiting
    deferred, writable, _unique = guest.send(Op.SETLKW, LK)
    plugin.pending[0].resolve(FuseError(errno.EDEADLK, "cycle"))
    assert _reply_of(deferred, writable) == (16, errno.EDEADLK)


def test_interrupt_cancels_the_waiting_request_with_eintr(waiting):
    guest, _plugin = waiting
    deferred, writable, unique = guest.send(Op.SETLKW, LK)
    assert guest.send(Op.INTERRUPT, abi.INTERRUPT_IN.pack(unique), out=0, queue=0)[0] == 0
    assert _reply_of(deferred, writable) == (16, errno.EINTR)


def test_a_stopping_ring_ends_the_wait_with_enolck(waiting):
    """The queue worker cancels the router's deferred byte count when its ring stops (a live
    migration's switch-over): not EINTR, which a Linux guest turns into errno 512."""
    guest, _plugin = waiting
    deferred, writable, _unique = guest.send(Op.SETLKW, LK)
    deferred.cancel()
    assert _reply_of(deferred, writable) == (16, errno.ENOLCK)


def test_an_interrupt_overtaking_its_request_still_cancels_it(waiting):
    guest, _plugin = waiting
    next_unique = next(guest.uniques)
    guest.uniques = itertools.count(next_unique)
    assert guest.send(Op.INTERRUPT, abi.INTERRUPT_IN.pack(next_unique + 2), out=0,
                      queue=0)[0] == 0
    guest.uniques = itertools.count(next_unique + 2)
    deferred, writable, unique = guest.send(Op.SETLKW, LK)
    assert unique == next_unique + 2
    assert _reply_of(deferred, writable) == (16, errno.EINTR)


def test_an_interrupt_of_nothing_waiting_changes_nothing(waiting):
    guest, _plugin = waiting
    assert guest.send(Op.INTERRUPT, abi.INTERRUPT_IN.pack(12345), out=0, queue=0)[0] == 0
    assert guest.send(Op.INTERRUPT, b"", out=0, queue=0)[0] == 0
    assert guest.ok(Op.SETLK, LK) == b""


def test_only_a_write_must_stay_in_guest_memory():
    """The compiled queue asks before handing a small request over as a copy: WRITE data keeps
    the guest's buffers (and their alignment, which host O_DIRECT needs)."""
    router = FuseRouter(make_plugin_manager(load_entry_points=False), CONFIG)
    for opcode, allowed in ((Op.WRITE, False), (Op.READ, True), (Op.LOOKUP, True),
                            (Op.SETXATTR, True)):
        header = abi.IN_HEADER.pack(80, opcode, 1, 1, 0, 0, 0, 0, 0)
        assert router.may_copy(memoryview(header + bytes(40))) is allowed, opcode


# --- Requests answered without their chain (the compiled worker's path) -------------------------


def _no_views() -> list[memoryview]:
    raise AssertionError("only a READ asks for the chain's buffers")


def _request(opcode: int, args: bytes = b"", nodeid: int = abi.ROOT_ID) -> memoryview:
    return memoryview(abi.IN_HEADER.pack(abi.IN_HEADER.size + len(args), opcode, 8, nodeid,
                                         1000, 1000, 77, 0, 0) + args)


@pytest.mark.parametrize("opcode", [Op.INIT, Op.DESTROY, Op.WRITE, Op.SETLK, Op.SETLKW])
def test_answer_leaves_requests_that_need_their_chain_untouched(mounted, memfs, opcode):
    """Nothing is served (the worker then hands the chain to handle_chain)."""
    args = abi.WRITE_IN.pack(1, 0, 3, 0, 0, 0, 0) + b"abc" if opcode == Op.WRITE else bytes(64)
    calls = len(memfs.calls)
    assert mounted.router.answer(1, _request(opcode, args), 4096, _no_views) is None
    assert mounted.router.session.initialized
    assert len(memfs.calls) == calls


def test_answer_leaves_everything_to_handle_chain_when_debugging(memfs, caplog):
    caplog.set_level(logging.DEBUG, logger="virtiofsd.fuse.router")
    guest = Guest(FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs]),
                             CONFIG))
    assert guest.init()[0] == 0
    assert guest.router.answer(1, _request(Op.STATFS), 4096, _no_views) is None


def test_answer_gives_the_reply_in_two_pieces_without_touching_guest_memory(mounted):
    header, body, in_place = mounted.router.answer(1, _request(Op.STATFS), 4096, _no_views)
    assert abi.OUT_HEADER.unpack(header) == (16 + len(body), 0, 8) and in_place == 0
    assert len(body) == abi.STATFS_OUT.size


def test_answer_checks_the_room_the_chain_has(failing, caplog):
    header, body, _ = failing.router.answer(1, _request(Op.LOOKUP, b"huge\0"), 100, _no_views)
    assert abi.OUT_HEADER.unpack(header) == (16, -errno.ERANGE, 8) and body == b""
    assert "does not fit" in caplog.text


def test_answer_serves_a_request_without_reply_and_completes_it_empty(mounted, memfs):
    nodeid = abi.ENTRY_OUT.unpack_from(mounted.ok(Op.MKDIR, abi.MKDIR_IN.pack(0o755, 0)
                                                  + b"d\0"))[0]
    assert memfs.nodes[nodeid].lookups == 1
    assert mounted.router.answer(0, _request(Op.FORGET, abi.FORGET_IN.pack(1), nodeid), 0,
                                 _no_views) == (b"", b"", 0)
    assert memfs.nodes[nodeid].lookups == 0


class DeferringGetattr:
    """A GETATTR that answers later: any hook may return a Deferred."""

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_getattr(self, req, nodeid, fh):
        deferred = Deferred()
        self.pending.append(deferred)
        return deferred


def test_a_deferred_answer_is_finished_with_the_chain(memfs):
    plugin = DeferringGetattr()
    router = FuseRouter(make_plugin_manager(load_entry_points=False, plugins=[memfs, plugin]),
                        CONFIG)
    assert Guest(router).init()[0] == 0
    pending = router.answer(1, _request(Op.GETATTR, abi.GETATTR_IN.pack(0, 0, 0)), 4096,
                            _no_views)
    assert pending is not None and not isinstance(pending, tuple)
    writable = [memoryview(bytearray(16)), memoryview(bytearray(200))]
    deferred = pending.finish(writable)
    assert isinstance(deferred, Deferred) and not deferred.done
    plugin.pending[0].resolve(b"late")
    assert _reply_of(deferred, writable) == (20, 0)
    assert bytes(writable[1][:4]) == b"late"


def test_a_read_answered_without_its_chain_asks_for_the_buffers_and_reports_them(mounted):
    """READ's data goes straight into the chain's buffers (asked for once the hook wants
    them); the answer is the header and how many bytes are already in place after it."""
    _nodeid, fh = mounted.create(b"f")
    mounted.ok(Op.WRITE, abi.WRITE_IN.pack(fh, 0, 5, 0, 0, 0, 0), pieces=(b"hello",))
    writable = [memoryview(bytearray(16)), memoryview(bytearray(100))]
    asked = []
    header, body, in_place = mounted.router.answer(
        1, _request(Op.READ, abi.READ_IN.pack(fh, 0, 100, 0, 0, 0, 0)), 116,
        lambda: asked.append(1) or writable)
    assert (abi.OUT_HEADER.unpack(header)[:2], body, in_place) == ((21, 0), b"", 5)
    assert bytes(writable[1][:5]) == b"hello" and asked == [1]
