"""A vhost-user front-end (the QEMU side) for driving a virtio-fs daemon without a VM.

:class:`VhostUserFrontend` owns the UNIX socket to the daemon, the fake guest memory and the
driver halves of the virtqueues.  :meth:`VhostUserFrontend.start` replays what QEMU 7.2 sends
when a ``vhost-user-fs-pci`` device is realised and the guest driver starts it:

1. GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ),
   GET_MAX_MEM_SLOTS (with CONFIGURE_MEM_SLOTS), SET_BACKEND_REQ_FD (with BACKEND_REQ),
   SET_OWNER;
2. SET_FEATURES, SET_MEM_TABLE with one fd per region;
3. per queue SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL;
   then SET_VRING_ENABLE for each queue.

When REPLY_ACK is negotiated every request without a reply of its own carries NEED_REPLY and
its acknowledgement is checked, so a daemon that silently rejects a step fails right there
rather than at the first FUSE request.

Every socket operation has a timeout (``timeout`` seconds): a daemon that stops answering
raises TimeoutError instead of hanging the test.  The low-level methods (:meth:`send`,
:meth:`send_raw`, :meth:`receive_reply`) are public so that robustness tests can send
messages QEMU never would.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import time
from collections.abc import Sequence

from virtiofsd.testing.driver_ring import DriverQueue
from virtiofsd.testing.guest_memory import GuestMemory
from virtiofsd.vhost_user import messages as vu
from virtiofsd.vhost_user.messages import FrontendRequest as Req
from virtiofsd.vhost_user.messages import ProtocolFeature, VirtioFeature

__all__ = ["BackendProtocolError", "VhostUserFrontend", "HIPRIO_QUEUE", "REQUEST_QUEUE"]

log = logging.getLogger(__name__)

HIPRIO_QUEUE = 0
REQUEST_QUEUE = 1

#: Protocol features this front-end knows how to use; the rest of the offer is left unacked.
SUPPORTED_PROTOCOL_FEATURES = (
    ProtocolFeature.MQ
    | ProtocolFeature.REPLY_ACK
    | ProtocolFeature.BACKEND_REQ
    | ProtocolFeature.CONFIGURE_MEM_SLOTS
    | ProtocolFeature.RESET_DEVICE
)

_MAX_REPLY_FDS = 8


class BackendProtocolError(OSError):
    """The back-end (the daemon under test) broke the vhost-user protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


class VhostUserFrontend:
    """One vhost-user connection, the fake guest memory and its virtqueues.

    Build it with :meth:`connect`, then call :meth:`start`.  Close it (or use it as a context
    manager) to disconnect; the reference daemons exit when their front-end goes away.
    """

    def __init__(self, sock: socket.socket, *, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        sock.settimeout(timeout)
        self.virtio_features = 0
        self.offered_features = 0
        self.protocol_features = 0
        self.offered_protocol_features = 0
        self.queue_num: int | None = None
        self.max_mem_slots: int | None = None
        self.memory: GuestMemory | None = None
        self.queues: list[DriverQueue] = []
        self.backend_channel: socket.socket | None = None

    @classmethod
    def connect(
        cls, socket_path: str | os.PathLike[str], *, timeout: float = 5.0
    ) -> VhostUserFrontend:
        """Connect to a listening daemon, retrying until ``timeout`` while it starts up."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(timeout)
                sock.connect(os.fspath(socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as err:
                sock.close()
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"no vhost-user listener at {socket_path} after {timeout:g}s",
                    ) from err
                time.sleep(0.02)
                continue
            except BaseException:
                sock.close()
                raise
            return cls(sock, timeout=timeout)

    # -- message layer ------------------------------------------------------------------------

    @property
    def reply_ack(self) -> bool:
        return bool(self.protocol_features & ProtocolFeature.REPLY_ACK)

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes (and fds) exactly as given: no framing, no checks."""
        ancillary = []
        if fds:
            ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds)))
        sent = self.sock.sendmsg([data], ancillary)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def send(
        self,
        request: int,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        *,
        need_reply: bool = False,
    ) -> None:
        self.send_raw(vu.encode_request(request, payload, need_reply=need_reply), fds)

    def receive_reply(self, request: int) -> tuple[bytes, list[int]]:
        """Read one reply, check it answers ``request``; return its payload and any fds."""
        header_bytes, fds = self._receive_exact(vu.HEADER.size, with_fds=True)
        try:
            header = vu.decode_header(header_bytes)
            if not header.is_reply:
                raise vu.MalformedMessage(f"flags {header.flags:#x} lack the REPLY bit")
            if header.request != request:
                raise vu.MalformedMessage(
                    f"reply is for {vu.request_name(header.request)}, "
                    f"expected {vu.request_name(request)}"
                )
            payload, more_fds = self._receive_exact(header.size, with_fds=True)
        except vu.MalformedMessage as err:
            _close_all(fds)
            raise BackendProtocolError(f"bad reply to {vu.request_name(request)}: {err}") from err
        return payload, fds + more_fds

    def request(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send a request that has no reply of its own; with REPLY_ACK, demand and check the ack."""
        ack = self.reply_ack
        self.send(request, payload, fds, need_reply=ack)
        if ack:
            self._check_ack(request)

    def query(self, request: int, payload: bytes = b"") -> bytes:
        """Send a request that has a reply of its own (GET_*) and return the reply payload."""
        self.send(request, payload)
        reply, fds = self.receive_reply(request)
        if fds:
            _close_all(fds)
            raise BackendProtocolError(f"{vu.request_name(request)} reply carried {len(fds)} fds")
        return reply

    def query_u64(self, request: int) -> int:
        reply = self.query(request)
        try:
            return vu.decode_u64(reply)
        except vu.MalformedMessage as err:
            raise BackendProtocolError(f"{vu.request_name(request)}: {err}") from err

    def _check_ack(self, request: int) -> None:
        reply, fds = self.receive_reply(request)
        _close_all(fds)
        try:
            status = vu.decode_u64(reply)
        except vu.MalformedMessage as err:
            raise BackendProtocolError(f"ack for {vu.request_name(request)}: {err}") from err
        if status != 0:
            raise BackendProtocolError(
                f"{vu.request_name(request)} was refused (status {status:#x})"
            )

    def _receive_exact(self, size: int, *, with_fds: bool) -> tuple[bytes, list[int]]:
        chunks = []
        fds: list[int] = []
        remaining = size
        ancillary_size = socket.CMSG_SPACE(_MAX_REPLY_FDS * 4) if with_fds else 0
        while remaining:
            data, ancillary, msg_flags, _ = self.sock.recvmsg(remaining, ancillary_size)
            for level, kind, cmsg in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(cmsg[: len(cmsg) - len(cmsg) % 4])
                    fds.extend(received)
            if msg_flags & socket.MSG_CTRUNC:
                _close_all(fds)
                raise BackendProtocolError("back-end sent more fds than any reply carries")
            if not data:
                _close_all(fds)
                raise ConnectionResetError(
                    errno.ECONNRESET,
                    f"daemon closed the connection ({size - remaining}/{size} bytes read)",
                )
            chunks.append(data)
            remaining -= len(data)
        return b"".join(chunks), fds

    def wait_for_disconnect(self, timeout: float | None = None) -> bool:
        """True if the daemon closes the connection within ``timeout``; unread data is discarded."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                data, ancillary, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(_MAX_REPLY_FDS * 4)
                )
                for level, kind, cmsg in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        _close_all(array.array("i", cmsg[: len(cmsg) - len(cmsg) % 4]))
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    # -- the QEMU start-up sequence -----------------------------------------------------------

    def start(
        self,
        memory: GuestMemory | None = None,
        *,
        queue_size: int = 128,
        num_queues: int = 2,
        event_idx: bool = False,
        protocol_features: int = SUPPORTED_PROTOCOL_FEATURES,
        backend_channel: bool = True,
        vring_base: int = 0,
    ) -> None:
        """Negotiate, hand over ``memory`` (default: a fresh :class:`GuestMemory`) and start
        ``num_queues`` queues of ``queue_size`` entries (queue 0 hiprio, then request queues).

        ``protocol_features`` is what we are willing to ack; the daemon's offer narrows it.
        ``vring_base`` is the initial index of every ring (SET_VRING_BASE).
        """
        self.negotiate(protocol_features=protocol_features, backend_channel=backend_channel)
        wanted = VirtioFeature.VERSION_1 | VirtioFeature.PROTOCOL_FEATURES
        if event_idx:
            wanted |= VirtioFeature.RING_EVENT_IDX
        missing = wanted & ~self.offered_features
        if missing:
            raise BackendProtocolError(
                f"daemon does not offer virtio features {VirtioFeature(missing)!r} "
                f"(offer {self.offered_features:#x})"
            )
        if self.queue_num is not None and num_queues > self.queue_num:
            raise BackendProtocolError(
                f"daemon supports {self.queue_num} queues, {num_queues} wanted"
            )
        self.set_features(wanted)
        self.set_mem_table(memory if memory is not None else GuestMemory())
        for index in range(num_queues):
            self.setup_queue(index, queue_size, base=vring_base)
        for index in range(num_queues):
            self.set_vring_enable(index, True)

    def negotiate(
        self, *, protocol_features: int = SUPPORTED_PROTOCOL_FEATURES, backend_channel: bool = True
    ) -> None:
        """The device-realize half of start-up: features, protocol features, owner."""
        self.offered_features = self.query_u64(Req.GET_FEATURES)
        if self.offered_features & VirtioFeature.PROTOCOL_FEATURES:
            self.offered_protocol_features = self.query_u64(Req.GET_PROTOCOL_FEATURES)
            acked = self.offered_protocol_features & protocol_features
            self.send(Req.SET_PROTOCOL_FEATURES, vu.encode_u64(acked))
            self.protocol_features = acked
            if acked & ProtocolFeature.MQ:
                self.queue_num = self.query_u64(Req.GET_QUEUE_NUM)
            if acked & ProtocolFeature.CONFIGURE_MEM_SLOTS:
                self.max_mem_slots = self.query_u64(Req.GET_MAX_MEM_SLOTS)
            if backend_channel and acked & ProtocolFeature.BACKEND_REQ:
                self.set_backend_req_fd()
        self.request(Req.SET_OWNER)

    def set_backend_req_fd(self) -> None:
        """Give the daemon a socket for back-end-initiated requests; we keep the other end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.request(Req.SET_BACKEND_REQ_FD, fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.backend_channel = ours

    def set_features(self, features: int) -> None:
        self.request(Req.SET_FEATURES, vu.encode_u64(features))
        self.virtio_features = features

    def set_mem_table(self, memory: GuestMemory) -> None:
        """Send every region of ``memory`` with its memfd; the frontend then owns ``memory``."""
        regions = [
            vu.MemoryRegion(r.guest_phys_addr, r.size, r.userspace_addr, r.mmap_offset)
            for r in memory.regions
        ]
        self.request(
            Req.SET_MEM_TABLE, vu.encode_memory_table(regions), [r.fd for r in memory.regions]
        )
        self.memory = memory

    def setup_queue(self, index: int, size: int, *, base: int = 0) -> DriverQueue:
        """Allocate a ring in guest memory and describe it to the daemon (not yet enabled)."""
        if self.memory is None:
            raise RuntimeError("SET_MEM_TABLE must come before queues are set up")
        event_idx = bool(self.virtio_features & VirtioFeature.RING_EVENT_IDX)
        queue = DriverQueue(self.memory, size, event_idx=event_idx, base=base)
        try:
            memory = self.memory
            self.request(Req.SET_VRING_NUM, vu.encode_vring_state(index, size))
            self.request(Req.SET_VRING_BASE, vu.encode_vring_state(index, base))
            addr = vu.VringAddr(
                index=index,
                flags=0,
                desc_user_addr=memory.userspace_addr(queue.desc_gpa),
                used_user_addr=memory.userspace_addr(queue.used_gpa),
                avail_user_addr=memory.userspace_addr(queue.avail_gpa),
                log_guest_addr=0,
            )
            self.request(Req.SET_VRING_ADDR, vu.encode_vring_addr(addr))
            self.request(Req.SET_VRING_KICK, vu.encode_vring_fd_payload(index), [queue.kick_fd])
            self.request(Req.SET_VRING_CALL, vu.encode_vring_fd_payload(index), [queue.call_fd])
        except BaseException:
            queue.close()
            raise
        while len(self.queues) <= index:
            self.queues.append(None)  # type: ignore[arg-type]
        if self.queues[index] is not None:
            self.queues[index].close()
        self.queues[index] = queue
        return queue

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self.request(Req.SET_VRING_ENABLE, vu.encode_vring_state(index, int(enable)))

    def get_vring_base(self, index: int) -> int:
        """Stop queue ``index`` and return the daemon's next available index for it."""
        reply = self.query(Req.GET_VRING_BASE, vu.encode_vring_state(index, 0))
        try:
            return vu.decode_vring_state(reply).num
        except vu.MalformedMessage as err:
            raise BackendProtocolError(f"GET_VRING_BASE: {err}") from err

    def reset_device(self) -> None:
        self.request(Req.RESET_DEVICE)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect and release queues and guest memory; idempotent."""
        self.sock.close()
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None
        for queue in self.queues:
            if queue is not None:
                queue.close()
        self.queues = []
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def __enter__(self) -> VhostUserFrontend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
