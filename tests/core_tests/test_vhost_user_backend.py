"""The back-end state machine and the daemon runtime, driven over a socketpair.

A tiny front-end lives in this file: it shares a memfd as guest RAM, hands over real eventfds,
writes descriptors and avail entries into the shared mapping and reads the used ring back.
The daemon side runs ``serve_connection`` in a thread, exactly as in production.
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time

import pytest
from virtiofsd.errors import FrontendProtocolError, GuestProtocolError
from virtiofsd.io.daemon import serve_connection
from virtiofsd.io.unix_socket import receive_message, send_message
from virtiofsd.vhost_user import messages as m
from virtiofsd.vhost_user.backend import OFFERED_FEATURES, VhostUserBackend, Vring
from virtiofsd.vhost_user.messages import FrontendRequest as R
from virtiofsd.vhost_user.messages import ProtocolFeature as PF
from virtiofsd.virtio.native_queue import NATIVE_AVAILABLE

GPA = 0x100000
MEM_SIZE = 0x200000
UADDR = 0x7F00_0000_0000  # deliberately unlike the GPA
QUEUE_SIZE = 16
NEXT, WRITE = 1, 2
TIMEOUT = 5.0


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


class Handler:
    """Records requests; answers each with b"pong", or misbehaves on demand."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, bytes]] = []
        self.resets = 0
        self.fail_next = False
        self.handled = threading.Event()

    def handle_chain(self, queue_index, readable, writable):
        self.requests.append((queue_index, b"".join(bytes(view) for view in readable)))
        self.handled.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("handler bug")
        writable[0][:4] = b"pong"
        return 4

    def reset(self) -> None:
        self.resets += 1


class Ring:
    """The driver's side of one split ring inside the shared memory."""

    def __init__(self, memory: Frontend, index: int) -> None:
        self.memory = memory
        self.index = index
        base = 0x10000 * (index + 1)
        self.desc, self.avail, self.used = base, base + 0x1000, base + 0x2000
        self.data = base + 0x4000
        self.avail_idx = 0
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def write_desc(self, index: int, gpa: int, length: int, flags: int = 0, next_: int = 0) -> None:
        struct.pack_into("<QIHH", self.memory.ram, self.desc + 16 * index, gpa, length, flags, next_)

    def post_request(self, head: int, request: bytes) -> None:
        """Descriptor ``head``: the request; ``head + 1``: 64 bytes for the reply."""
        offset = self.data + 0x100 * head
        self.memory.ram[offset : offset + len(request)] = request
        self.write_desc(head, GPA + offset, len(request), NEXT, head + 1)
        self.write_desc(head + 1, GPA + offset + 0x80, 64, WRITE)
        self.publish(head)

    def publish(self, head: int) -> None:
        struct.pack_into("<H", self.memory.ram, self.avail + 4 + 2 * (self.avail_idx % QUEUE_SIZE), head)
        self.avail_idx += 1
        struct.pack_into("<H", self.memory.ram, self.avail + 2, self.avail_idx)
        os.eventfd_write(self.kick, 1)

    def used_idx(self) -> int:
        return struct.unpack_from("<H", self.memory.ram, self.used + 2)[0]

    def used_element(self, slot: int) -> tuple[int, int]:
        return struct.unpack_from("<II", self.memory.ram, self.used + 4 + 8 * slot)

    def reply(self, head: int) -> bytes:
        offset = self.data + 0x100 * head + 0x80
        return bytes(self.memory.ram[offset : offset + 4])

    def wait_used(self, count: int) -> None:
        """Wait until ``count`` entries are used, via the call eventfd."""
        poller = select.poll()
        poller.register(self.call, select.POLLIN)
        while (seen := self.used_idx()) < count:
            # Like a driver re-enabling callbacks with EVENT_IDX: "notify me after `seen`".
            struct.pack_into("<H", self.memory.ram, self.avail + 4 + 2 * QUEUE_SIZE, seen)
            if self.used_idx() != seen:
                continue
            assert poller.poll(TIMEOUT * 1000), f"ring {self.index}: no call after {TIMEOUT}s"
            os.eventfd_read(self.call)

    def close(self) -> None:
        os.close(self.kick)
        os.close(self.call)


class Frontend:
    """Sends requests like QEMU would and checks the replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)  # a missing reply fails the test instead of hanging it
        self.memfd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, MEM_SIZE)
        self.ram = mmap.mmap(self.memfd, MEM_SIZE)
        self.rings: dict[int, Ring] = {}

    def send(self, request: int, payload: bytes = b"", fds=(), *, need_reply: bool = False) -> None:
        send_message(self.sock, m.encode_request(request, payload, need_reply=need_reply), list(fds))

    def receive(self, request: int) -> bytes:
        message = receive_message(self.sock)
        assert message is not None, "daemon closed the connection"
        header, payload, fds = message
        assert header.is_reply and header.request == request and not fds
        return payload

    def call(self, request: int, payload: bytes = b"", fds=()) -> bytes:
        self.send(request, payload, fds)
        return self.receive(request)

    def ack(self, request: int, payload: bytes = b"", fds=()) -> int:
        self.send(request, payload, fds, need_reply=True)
        return m.decode_u64(self.receive(request))

    def negotiate(self, features: int = OFFERED_FEATURES, protocol: int | None = None) -> int:
        offered = m.decode_u64(self.call(R.GET_FEATURES))
        offered_protocol = m.decode_u64(self.call(R.GET_PROTOCOL_FEATURES))
        self.send(R.SET_PROTOCOL_FEATURES, m.encode_u64(offered_protocol if protocol is None else protocol))
        assert self.ack(R.SET_OWNER) == 0
        assert self.ack(R.SET_FEATURES, m.encode_u64(features & offered)) == 0
        region = m.MemoryRegion(GPA, MEM_SIZE, UADDR, 0)
        assert self.ack(R.SET_MEM_TABLE, m.encode_memory_table([region]), [self.memfd]) == 0
        return offered_protocol

    def start_ring(self, index: int, *, enable: bool = True, base: int = 0) -> Ring:
        ring = Ring(self, index)
        self.rings[index] = ring
        assert self.ack(R.SET_VRING_NUM, m.encode_vring_state(index, QUEUE_SIZE)) == 0
        assert self.ack(R.SET_VRING_BASE, m.encode_vring_state(index, base)) == 0
        addr = m.VringAddr(index, 0, UADDR + ring.desc, UADDR + ring.used, UADDR + ring.avail, 0)
        assert self.ack(R.SET_VRING_ADDR, m.encode_vring_addr(addr)) == 0
        assert self.ack(R.SET_VRING_KICK, m.encode_vring_fd_payload(index), [ring.kick]) == 0
        assert self.ack(R.SET_VRING_CALL, m.encode_vring_fd_payload(index), [ring.call]) == 0
        if enable:
            assert self.ack(R.SET_VRING_ENABLE, m.encode_vring_state(index, 1)) == 0
        return ring

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.ram.close()
        os.close(self.memfd)


class Session:
    def __init__(self, handler: Handler | None = None, **options) -> None:
        self.fds_before = open_fds()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.daemon_sock = theirs
        self.handler = handler or Handler()
        self.result: list[bool] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(serve_connection(theirs, self.handler, **options)),
            daemon=True,
        )
        self.thread.start()
        self.frontend = Frontend(ours)
        self.closed = False

    def finish(self) -> bool:
        """Disconnect, wait for the daemon, and return whether it saw a clean disconnect."""
        self.frontend.sock.close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "serve_connection did not return after EOF"
        self.cleanup()
        return self.result[0]

    def wait_for_daemon_exit(self) -> bool:
        """The daemon ends the connection by itself (protocol error)."""
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "serve_connection kept going after a protocol error"
        return self.result[0]

    def cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.frontend.sock.close()
        self.daemon_sock.close()
        self.frontend.close()


@pytest.fixture
def session(caplog):
    sessions: list[Session] = []

    def start(handler: Handler | None = None, **options) -> Session:
        sessions.append(Session(handler, **options))
        return sessions[-1]

    yield start
    for each in sessions:
        if each.thread.is_alive():
            each.finish()
        each.cleanup()
        # Logged tracebacks keep frames, hence guest-memory views and their mappings, alive.
        for record in caplog.get_records("call"):
            record.exc_info = None
        gc.collect()
        leaked = open_fds() - each.fds_before
        assert not leaked, f"file descriptors left open: {sorted(leaked)}"


# ---- control plane and data path, end to end ---------------------------------------------


def test_init_sequence_then_requests_flow_on_the_request_queue(session):
    s = session()
    fe = s.frontend
    assert m.decode_u64(fe.call(R.GET_FEATURES)) == OFFERED_FEATURES
    protocol = fe.negotiate()
    assert protocol & PF.REPLY_ACK and protocol & PF.CONFIGURE_MEM_SLOTS
    assert not protocol & PF.CONFIG  # no tag configured
    assert m.decode_u64(fe.call(R.GET_QUEUE_NUM)) == 2
    assert m.decode_u64(fe.call(R.GET_MAX_MEM_SLOTS)) == 509

    fe.start_ring(0)
    ring = fe.start_ring(1)
    ring.post_request(0, b"ping")
    ring.post_request(2, b"second")
    ring.wait_used(2)
    assert sorted(s.handler.requests) == [(1, b"ping"), (1, b"second")]
    assert ring.used_element(0) == (0, 4) and ring.used_element(1) == (2, 4)
    assert ring.reply(0) == b"pong"

    assert fe.call(R.GET_VRING_BASE, m.encode_vring_state(1, 0)) == m.encode_vring_state(1, 2)
    assert s.finish() is True
    assert s.handler.resets == 1


def test_ring_restarts_from_the_base_it_was_stopped_at(session):
    s = session()
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1)
    ring.post_request(0, b"one")
    ring.wait_used(1)
    base = m.decode_vring_state(fe.call(R.GET_VRING_BASE, m.encode_vring_state(1, 0))).num
    assert base == 1
    # Published while the ring is stopped: must not be processed.
    ring.post_request(2, b"two")
    time.sleep(0.2)
    assert len(s.handler.requests) == 1
    ring.close()
    restarted = fe.start_ring(1, base=base)
    restarted.avail_idx = ring.avail_idx
    restarted.wait_used(2)
    assert [request for _, request in s.handler.requests] == [b"one", b"two"]
    assert s.finish()


def test_disabled_ring_is_not_processed_until_enabled(session):
    s = session()
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1, enable=False)
    ring.post_request(0, b"early")
    assert not s.handler.handled.wait(0.3)
    assert fe.ack(R.SET_VRING_ENABLE, m.encode_vring_state(1, 1)) == 0
    ring.wait_used(1)
    assert s.handler.requests == [(1, b"early")]
    assert s.finish()


def test_without_protocol_features_rings_are_enabled_by_set_features(session):
    s = session()
    fe = s.frontend
    features = OFFERED_FEATURES & ~m.VirtioFeature.PROTOCOL_FEATURES
    fe.send(R.SET_FEATURES, m.encode_u64(features))
    region = m.MemoryRegion(GPA, MEM_SIZE, UADDR, 0)
    fe.send(R.SET_MEM_TABLE, m.encode_memory_table([region]), [fe.memfd])
    ring = Ring(fe, 1)
    fe.rings[1] = ring
    fe.send(R.SET_VRING_NUM, m.encode_vring_state(1, QUEUE_SIZE))
    addr = m.VringAddr(1, 0, UADDR + ring.desc, UADDR + ring.used, UADDR + ring.avail, 0)
    fe.send(R.SET_VRING_ADDR, m.encode_vring_addr(addr))
    fe.send(R.SET_VRING_KICK, m.encode_vring_fd_payload(1), [ring.kick])
    fe.send(R.SET_VRING_CALL, m.encode_vring_fd_payload(1), [ring.call])
    assert m.decode_u64(fe.call(R.GET_QUEUE_NUM)) == 2  # all of the above was applied
    ring.post_request(0, b"legacy")
    ring.wait_used(1)
    assert s.finish()


def test_event_idx_and_plain_rings_both_signal_the_guest(session):
    for features in (OFFERED_FEATURES, OFFERED_FEATURES & ~m.VirtioFeature.RING_EVENT_IDX):
        s = session()
        s.frontend.negotiate(features)
        ring = s.frontend.start_ring(1)
        for head in range(0, 8, 2):
            ring.post_request(head, b"x%d" % head)
            ring.wait_used(head // 2 + 1)
        assert s.finish()


def test_malformed_chain_and_handler_bug_complete_with_zero_and_serving_goes_on(session, caplog):
    s = session()
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1)
    ring.write_desc(4, GPA + MEM_SIZE - 2, 8)  # runs off the end of guest memory
    ring.publish(4)
    ring.wait_used(1)
    assert ring.used_element(0) == (4, 0)
    s.handler.fail_next = True
    ring.post_request(6, b"boom")
    ring.wait_used(2)
    assert ring.used_element(1) == (6, 0)
    ring.post_request(8, b"fine")
    ring.wait_used(3)
    assert ring.used_element(2) == (8, 4)
    assert s.finish()
    assert "not backed by guest memory" in caplog.text
    assert "request handler failed" in caplog.text and "RuntimeError: handler bug" in caplog.text


class AnsweringHandler(Handler):
    """Also answers small requests without their chain, as the FUSE router does."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[bytes] = []

    def answer(self, queue_index, request, room, writable):
        data = bytes(request)
        if data == b"bug":
            raise RuntimeError("answer bug")
        if data == b"ping":
            self.answered.append(data)
            return b"an", b"swer", 0
        if data == b"read":
            self.answered.append(data)
            writable()[0][2:6] = b"DATA"
            return b"ok", b"", 4
        if data == b"later":
            self.answered.append(data)
            return Later()
        return None


class Later:
    """An answer that needs the chain's buffers after all (the router's PendingAnswer)."""

    def finish(self, writable):
        writable[0][:4] = b"late"
        return 4


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason="the compiled virtqueue module is not built")
def test_small_requests_are_answered_without_their_chain_and_the_rest_as_chains(session,
                                                                                 caplog):
    s = session(AnsweringHandler())
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1)
    for count, (head, request) in enumerate([(0, b"ping"), (2, b"read"), (4, b"later"),
                                             (6, b"other"), (8, b"bug"), (10, b"ping")], 1):
        ring.post_request(head, request)
        ring.wait_used(count)
    assert [ring.used_element(slot) for slot in range(6)] == [
        (0, 6), (2, 6), (4, 4), (6, 4), (8, 0), (10, 6)]
    assert [ring.reply(head) for head in (0, 2, 4, 6)] == [b"answ", b"okDA", b"late", b"pong"]
    assert s.handler.answered == [b"ping", b"read", b"later", b"ping"]
    assert s.handler.requests == [(1, b"other")], "only what answer declines is a chain"
    assert s.finish()
    assert "request handler failed" in caplog.text and "RuntimeError: answer bug" in caplog.text


def test_memory_added_while_running_is_picked_up(session):
    s = session()
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1)
    extra_gpa, extra_size = 0x4000_0000, 0x10000
    extra = os.memfd_create("hotplug", os.MFD_CLOEXEC)
    try:
        os.ftruncate(extra, extra_size)
        os.pwrite(extra, b"hotplugged", 0x100)
        region = m.MemoryRegion(extra_gpa, extra_size, UADDR + 0x1000_0000, 0)
        assert fe.ack(R.ADD_MEM_REG, m.encode_single_region(region), [extra]) == 0
        ring.write_desc(0, extra_gpa + 0x100, 10, NEXT, 1)
        ring.write_desc(1, extra_gpa + 0x200, 16, WRITE)
        ring.publish(0)
        ring.wait_used(1)
        assert s.handler.requests == [(1, b"hotplugged")]
        assert os.pread(extra, 4, 0x200) == b"pong"
        assert fe.ack(R.REM_MEM_REG, m.encode_single_region(region)) == 0
        assert fe.ack(R.REM_MEM_REG, m.encode_single_region(region)) != 0
    finally:
        os.close(extra)
    assert s.finish()


def test_replacing_the_memory_table_while_running(session):
    s = session()
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1)
    ring.post_request(0, b"before")
    ring.wait_used(1)
    region = m.MemoryRegion(GPA, MEM_SIZE, UADDR, 0)
    assert fe.ack(R.SET_MEM_TABLE, m.encode_memory_table([region]), [fe.memfd]) == 0
    ring.post_request(2, b"after")
    ring.wait_used(2)
    assert [request for _, request in s.handler.requests] == [b"before", b"after"]
    assert s.finish()


def test_reset_device_stops_rings_and_resets_the_handler(session):
    s = session()
    fe = s.frontend
    fe.negotiate()
    ring = fe.start_ring(1)
    assert fe.ack(R.RESET_DEVICE) == 0
    assert s.handler.resets == 1
    ring.post_request(0, b"after reset")
    assert not s.handler.handled.wait(0.2)
    assert s.finish()
    assert s.handler.resets == 2


# ---- config space ---------------------------------------------------------------------


def test_config_space_is_offered_only_with_a_tag(session):
    s = session(tag="myfs", num_request_queues=1)
    fe = s.frontend
    protocol = fe.negotiate()
    assert protocol & PF.CONFIG
    reply = m.decode_config(fe.call(R.GET_CONFIG, m.encode_config(0, bytes(40))))
    assert reply.data == b"myfs".ljust(36, b"\0") + struct.pack("<I", 1)
    partial = m.decode_config(fe.call(R.GET_CONFIG, m.encode_config(36, bytes(8))))
    assert partial.data == struct.pack("<I", 1) + bytes(4)
    too_far = m.decode_config(fe.call(R.GET_CONFIG, m.encode_config(250, bytes(8))))
    assert too_far.size == 0
    assert fe.ack(R.SET_CONFIG, m.encode_config(0, b"x")) == 0
    assert s.finish()


def test_get_config_without_a_tag_answers_with_an_empty_config(session):
    s = session()
    fe = s.frontend
    fe.negotiate()
    assert m.decode_config(fe.call(R.GET_CONFIG, m.encode_config(0, bytes(40)))).size == 0
    assert s.finish()


# ---- refusals that keep the connection ----------------------------------------------------


def test_refused_requests_get_a_failure_ack_and_the_connection_survives(session, caplog):
    s = session()
    fe = s.frontend
    fe.negotiate()
    assert fe.ack(R.SET_VRING_NUM, m.encode_vring_state(1, 3)) != 0
    assert fe.ack(R.SET_VRING_NUM, m.encode_vring_state(1, 65536)) != 0
    assert fe.ack(R.SET_VRING_NUM, m.encode_vring_state(7, 16)) != 0
    assert fe.ack(R.SET_FEATURES, m.encode_u64(m.VirtioFeature.RING_PACKED)) != 0
    assert fe.ack(R.SET_OWNER) != 0  # already owned
    assert fe.ack(R.SET_STATUS, m.encode_u64(0xF)) != 0
    assert fe.ack(99) != 0
    bad_addr = m.VringAddr(1, 0, 0x1234, 0x5678, 0x9ABC, 0)  # not front-end addresses
    assert fe.ack(R.SET_VRING_ADDR, m.encode_vring_addr(bad_addr)) != 0
    assert m.decode_u64(fe.call(R.GET_FEATURES)) == OFFERED_FEATURES
    assert s.finish()
    assert "refusing front-end request SET_VRING_NUM" in caplog.text
    assert "UNKNOWN_REQUEST(99)" in caplog.text


def test_without_reply_ack_refusals_send_nothing(session):
    s = session()
    fe = s.frontend
    fe.send(R.SET_PROTOCOL_FEATURES, m.encode_u64(PF.MQ))
    fe.send(R.SET_OWNER, need_reply=True)
    fe.send(R.SET_VRING_NUM, m.encode_vring_state(1, 3), need_reply=True)
    assert m.decode_u64(fe.call(R.GET_QUEUE_NUM)) == 2  # the first reply is this one
    assert s.finish()


# ---- protocol errors that end the connection ----------------------------------------------


@pytest.mark.parametrize(
    "request_code, payload, fd_count, match",
    [
        (R.SET_FEATURES, b"\0" * 4, 0, "payload is 4 bytes, expected 8"),
        (R.GET_FEATURES, b"", 1, "carries 1 file descriptors, expected 0"),
        (R.ADD_MEM_REG, bytes(40), 0, "carries 0 file descriptors, expected 1"),
        (R.SET_VRING_KICK, m.encode_vring_fd_payload(1, nofd=True), 1, "NOFD flag is set"),
        (R.SET_VRING_CALL, m.encode_vring_fd_payload(1), 0, "NOFD flag is clear"),
        (R.SET_MEM_TABLE, m.encode_memory_table([m.MemoryRegion(0, 4096, 0, 0)] * 2), 1,
         "2 regions but 1 file descriptors"),
        (R.GET_VRING_BASE, m.encode_vring_state(9, 0), 0, "expects a reply"),
        (R.GET_INFLIGHT_FD, bytes(24), 0, "expects a reply"),
    ],
)
def test_malformed_messages_end_the_connection(session, caplog, request_code, payload, fd_count, match):
    s = session()
    fe = s.frontend
    fe.negotiate()
    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(fd_count)]
    try:
        fe.send(request_code, payload, fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert s.wait_for_daemon_exit() is False
    assert match in caplog.text
    assert "vhost-user protocol error, closing the connection" in caplog.text
    assert s.handler.resets == 1


def test_bad_header_version_ends_the_connection(session, caplog):
    s = session()
    s.frontend.sock.sendall(m.HEADER.pack(R.GET_FEATURES, 0x2, 0))
    assert s.wait_for_daemon_exit() is False
    assert "unsupported vhost-user version" in caplog.text


def test_truncated_message_ends_the_connection(session, caplog):
    s = session()
    s.frontend.sock.sendall(m.HEADER.pack(R.SET_FEATURES, 0x1, 8) + b"\0\0")
    s.frontend.sock.shutdown(socket.SHUT_WR)
    assert s.wait_for_daemon_exit() is False
    assert "in the middle of a message" in caplog.text


# ---- the state machine alone, with a fake runner -------------------------------------------


class FakeRunner:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def start_ring(self, vring, queue, memory):
        self.events.append(("start", vring.index))

    def stop_ring(self, vring):
        self.events.append(("stop", vring.index))

    def wake_ring(self, vring):
        self.events.append(("wake", vring.index))

    def reset_device(self):
        self.events.append(("reset", -1))


def handle(backend: VhostUserBackend, request: int, payload: bytes = b"", fds=(), need_reply=False):
    header = m.decode_header(m.encode_request(request, payload, need_reply=need_reply)[:12])
    return backend.handle_message(header, payload, list(fds))


def test_fds_of_refused_and_replaced_messages_are_closed():
    runner = FakeRunner()
    backend = VhostUserBackend(runner)
    before = open_fds()
    first, second, err = (os.eventfd(0, os.EFD_CLOEXEC) for _ in range(3))
    handle(backend, R.SET_VRING_CALL, m.encode_vring_fd_payload(1), [first])
    handle(backend, R.SET_VRING_CALL, m.encode_vring_fd_payload(1), [second])
    with pytest.raises(OSError):
        os.fstat(first)  # replaced: closed by the back-end
    handle(backend, R.SET_VRING_ERR, m.encode_vring_fd_payload(9), [err])  # bad index: refused
    with pytest.raises(OSError):
        os.fstat(err)
    backend.close()
    with pytest.raises(OSError):
        os.fstat(second)
    assert open_fds() == before


def test_state_machine_starts_rings_only_when_fully_configured():
    runner = FakeRunner()
    backend = VhostUserBackend(runner)
    before = open_fds()
    memfd = os.memfd_create("ram", os.MFD_CLOEXEC)  # both handed over: the back-end owns them
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        os.ftruncate(memfd, MEM_SIZE)
        handle(backend, R.SET_FEATURES, m.encode_u64(OFFERED_FEATURES))
        handle(backend, R.SET_VRING_KICK, m.encode_vring_fd_payload(1), [kick])
        assert runner.events == []  # no memory, no size, no addresses yet
        handle(backend, R.SET_MEM_TABLE,
               m.encode_memory_table([m.MemoryRegion(GPA, MEM_SIZE, UADDR, 0)]), [memfd])
        handle(backend, R.SET_VRING_NUM, m.encode_vring_state(1, QUEUE_SIZE))
        addr = m.VringAddr(1, 0, UADDR + 0x1000, UADDR + 0x3000, UADDR + 0x2000, 0)
        handle(backend, R.SET_VRING_ADDR, m.encode_vring_addr(addr))
        assert runner.events == [("start", 1)]
        assert backend.vrings[1].desc_gpa == GPA + 0x1000
        handle(backend, R.SET_VRING_ADDR, m.encode_vring_addr(addr))  # same: no restart
        handle(backend, R.SET_VRING_ENABLE, m.encode_vring_state(1, 1))
        assert runner.events == [("start", 1), ("wake", 1)]
        # A running worker must look before its next chain when the memory table changes
        # (hot-plugged memory) or its ring is disabled.
        added = os.memfd_create("hotplug", os.MFD_CLOEXEC)
        os.ftruncate(added, 0x1000)
        handle(backend, R.ADD_MEM_REG,
               m.encode_single_region(m.MemoryRegion(GPA + MEM_SIZE, 0x1000, UADDR + MEM_SIZE,
                                                     0)), [added])
        handle(backend, R.SET_VRING_ENABLE, m.encode_vring_state(1, 0))
        assert runner.events == [("start", 1), ("wake", 1), ("wake", 1), ("wake", 1)]
        reply = handle(backend, R.GET_VRING_BASE, m.encode_vring_state(1, 0))
        assert m.decode_vring_state(reply[12:]) == (1, 0)
        assert runner.events[-1] == ("stop", 1)
        assert backend.vrings[1].kick_fd == -1
        with pytest.raises(FrontendProtocolError):
            handle(backend, R.GET_VRING_BASE, m.encode_vring_state(5, 0))
    finally:
        backend.close()
    gc.collect()
    assert open_fds() == before


def test_guest_protocol_error_is_not_a_frontend_error():
    # The two error kinds lead to different outcomes; keep them unrelated.
    assert not issubclass(GuestProtocolError, FrontendProtocolError)
    assert not issubclass(FrontendProtocolError, GuestProtocolError)


def test_reply_ack_is_sent_only_when_negotiated_and_requested():
    backend = VhostUserBackend(FakeRunner())
    assert handle(backend, R.SET_OWNER, need_reply=True) is None
    handle(backend, R.SET_PROTOCOL_FEATURES, m.encode_u64(PF.REPLY_ACK))
    assert handle(backend, R.RESET_OWNER) is None
    reply = handle(backend, R.SET_OWNER, need_reply=True)
    assert m.decode_header(reply[:12]).is_reply and m.decode_u64(reply[12:]) == 0
    # A request with its own reply body never gets an extra ack.
    reply = handle(backend, R.GET_QUEUE_NUM, need_reply=True)
    assert len(reply) == 20 and m.decode_u64(reply[12:]) == 2
    backend.close()


def test_multiple_request_queues_are_announced():
    backend = VhostUserBackend(FakeRunner(), tag="fs", num_request_queues=3)
    assert m.decode_u64(handle(backend, R.GET_QUEUE_NUM)[12:]) == 4
    handle(backend, R.SET_PROTOCOL_FEATURES, m.encode_u64(PF.CONFIG))
    config = m.decode_config(handle(backend, R.GET_CONFIG, m.encode_config(0, bytes(40)))[12:])
    assert struct.unpack_from("<I", config.data, 36)[0] == 3
    backend.close()


def test_logging_names_the_request(caplog):
    caplog.set_level(logging.DEBUG, logger="virtiofsd.vhost_user.backend")
    backend = VhostUserBackend(FakeRunner())
    handle(backend, R.GET_FEATURES)
    assert "GET_FEATURES" in caplog.text
    backend.close()


def test_a_call_fd_follower_hears_of_every_replacement_before_the_old_fd_is_handed_back():
    """The compiled worker writes the call eventfd itself: it is told the new descriptor (and
    stops writing the old one) before the control plane gets the old one back to close."""
    vring = Vring(1)
    heard: list[int] = []
    vring.replace_call_fd(7)
    vring.follow_call_fd(heard.append)
    assert heard == [7], "the follower starts with the current descriptor"
    assert vring.replace_call_fd(8) == 7 and heard == [7, 8]
    vring.follow_call_fd(None)
    vring.replace_call_fd(-1)
    assert heard == [7, 8]
