"""The vhost-user back-end state machine of a virtio-fs device.

:class:`VhostUserBackend` takes one decoded message at a time (header, payload, received fds)
and returns the reply bytes, if any.  It owns the negotiated features, the memory table and
the per-ring configuration (:class:`Vring`).  It does not run rings: starting and stopping the
worker that consumes a ring is delegated to a :class:`RingRunner` (the daemon's thread pool in
production, a fake in unit tests), which keeps this module free of threads and sockets.

Failure policy, in increasing severity:

* a request we understand but refuse (a ring index out of range, a queue size that is not a
  power of two, an unsupported request that needs no reply body): logged as an error; the
  front-end gets a non-zero REPLY_ACK if it asked for one; the connection goes on.
* a malformed message (wrong payload size, wrong number of fds, a refused request whose reply
  the front-end is waiting for): :class:`~virtiofsd.errors.FrontendProtocolError`, which ends
  the connection.  The front-end would otherwise wait for a reply we cannot give.

File descriptors: every fd passed to :meth:`VhostUserBackend.handle_message` is owned by the
back-end from then on.  A handler that keeps one removes it from the list; whatever is left
is closed before ``handle_message`` returns, whatever happened.  Kept fds are closed when they
are replaced, when their ring is reset, or in :meth:`VhostUserBackend.close`: each exactly once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from virtiofsd.errors import FrontendProtocolError, GuestProtocolError
from virtiofsd.vhost_user import messages as msg
from virtiofsd.vhost_user.messages import (
    FrontendRequest,
    Header,
    ProtocolFeature,
    VirtioFeature,
)
from virtiofsd.virtio.device import virtio_fs_config
from virtiofsd.virtio.dirty_log import DirtyLog
from virtiofsd.virtio.memory import GuestMemory, GuestMemoryError, map_region
from virtiofsd.virtio.native_queue import split_queue_class
from virtiofsd.virtio.split_queue import SplitQueue, check_queue_size

__all__ = [
    "DEFAULT_MAX_MEM_SLOTS",
    "OFFERED_FEATURES",
    "RequestRefused",
    "RingRunner",
    "VhostUserBackend",
    "Vring",
]

logger = logging.getLogger(__name__)

#: Appended to every memory-table failure: by far the most common cause is guest RAM that QEMU
#: did not allocate as shared memory, so it has no fd the daemon can map, or one it cannot map.
GUEST_MEMORY_HINT = ("guest memory must be shared with virtiofsd: start QEMU with "
                     "-object memory-backend-memfd,id=mem,size=SIZE,share=on -numa node,memdev=mem "
                     "(or memory-backend-file with share=on; libvirt: <memoryBacking><source "
                     "type='memfd'/><access mode='shared'/></memoryBacking>)")

DEFAULT_MAX_MEM_SLOTS = 509

#: Virtio features we offer; LOG_ALL is dirty logging for live migration.
OFFERED_FEATURES = (
    VirtioFeature.VERSION_1
    | VirtioFeature.LOG_ALL
    | VirtioFeature.RING_INDIRECT_DESC
    | VirtioFeature.RING_EVENT_IDX
    | VirtioFeature.PROTOCOL_FEATURES
)

#: Protocol features always offered; CONFIG is added when a tag is configured.
BASE_PROTOCOL_FEATURES = (
    ProtocolFeature.MQ
    | ProtocolFeature.REPLY_ACK
    | ProtocolFeature.BACKEND_REQ
    | ProtocolFeature.BACKEND_SEND_FD
    | ProtocolFeature.RESET_DEVICE
    | ProtocolFeature.CONFIGURE_MEM_SLOTS
    | ProtocolFeature.LOG_SHMFD
)

#: SET_DEVICE_STATE_FD reply: bits 0-7 an error code, bit 8 "no fd of ours comes back".
_DEVICE_STATE_NO_FD = 0x100
_DEVICE_STATE_FAILED = 1
_PHASE_STOPPED = 0


class RequestRefused(Exception):
    """A well-formed request we will not carry out; the connection survives it."""


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


class Vring:
    """Configuration and fds of one virtqueue, as set by the front-end.

    ``base`` is the next available index to process: set by SET_VRING_BASE, and written back by
    the ring's worker when it stops, so that GET_VRING_BASE can report it.  ``call_fd`` may be
    replaced while the worker runs (QEMU does that when it masks guest interrupts), so it is
    only touched under ``_call_lock``: closing it while the worker writes to it could
    otherwise signal whatever file reused the number.
    """

    __slots__ = (
        "_call_fd",
        "_call_fd_follower",
        "_call_lock",
        "addr_flags",
        "avail_gpa",
        "base",
        "desc_gpa",
        "dirty_log",
        "enabled",
        "err_fd",
        "index",
        "kick_fd",
        "log_guest_addr",
        "running",
        "size",
        "used_gpa",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self._call_lock = threading.Lock()
        self._call_fd = -1
        self._call_fd_follower: Callable[[int], None] | None = None
        self.kick_fd = -1
        self.err_fd = -1
        self.running = False
        #: The dirty log while the front-end has LOG_ALL on, else None; the ring's worker marks
        #: what it writes into guest memory whenever this is set.
        self.dirty_log: DirtyLog | None = None
        self.clear()

    def clear(self) -> None:
        """Back to the state of a fresh ring (fds are closed by the caller first)."""
        self.size = 0
        self.desc_gpa: int | None = None
        self.avail_gpa: int | None = None
        self.used_gpa: int | None = None
        self.addr_flags = 0
        self.log_guest_addr = 0
        self.base = 0
        self.enabled = False

    @property
    def configured(self) -> bool:
        return self.size > 0 and self.desc_gpa is not None

    @property
    def call_fd(self) -> int:
        return self._call_fd

    def replace_call_fd(self, fd: int) -> int:
        """Install a new call eventfd (-1: none) and return the old one for the caller to close
        (the follower, if any, has stopped writing to it by then)."""
        with self._call_lock:
            old, self._call_fd = self._call_fd, fd
            if self._call_fd_follower is not None:
                self._call_fd_follower(fd)
        return old

    def follow_call_fd(self, follower: Callable[[int], None] | None) -> None:
        """Have ``follower(fd)`` told the call eventfd now and at every replacement, before the
        old one is closed (the compiled worker signals it itself); None stops that."""
        with self._call_lock:
            self._call_fd_follower = follower
            if follower is not None:
                follower(self._call_fd)

    def signal_call(self) -> None:
        """Interrupt the guest: write the call eventfd, if the front-end gave one."""
        with self._call_lock:
            if self._call_fd >= 0:
                os.eventfd_write(self._call_fd, 1)

    def close_fds(self) -> None:
        _close(self.replace_call_fd(-1))
        _close(self.kick_fd)
        _close(self.err_fd)
        self.kick_fd = -1
        self.err_fd = -1


class DeviceStateHandler(Protocol):
    """Carries out SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE; see
    :mod:`virtiofsd.io.device_state`."""

    def start(self, direction: int, fd: int) -> None:
        """Take ``fd`` and start saving (0) into it or loading (1) from it."""

    def check(self) -> bool:
        """Wait for the transfer to end; whether it succeeded."""

    def ring_starting(self) -> None:
        """A ring is about to start serving (after a save: the migration failed)."""


class RingRunner(Protocol):
    """Runs the workers that consume started rings; see :mod:`virtiofsd.io.daemon`."""

    def start_ring(
        self, vring: Vring, queue: SplitQueue, memory: Callable[[], GuestMemory | None]
    ) -> None:
        """Start consuming ``queue`` on ``vring.kick_fd``; ``memory()`` is the current table."""

    def stop_ring(self, vring: Vring) -> None:
        """Stop the worker and wait for it; afterwards ``vring.base`` is its next avail index."""

    def wake_ring(self, vring: Vring) -> None:
        """Make the worker look at its ring again, before it walks another chain (the ring was
        just enabled or disabled, or the memory table replaced)."""

    def reset_device(self) -> None:
        """The front-end reset the device: forget request-handler state."""


_Handler = Callable[[bytes, list[int]], bytes | None]


class VhostUserBackend:
    """The control plane of one front-end connection."""

    def __init__(
        self,
        runner: RingRunner,
        *,
        tag: str | None = None,
        num_request_queues: int = 1,
        max_mem_slots: int = DEFAULT_MAX_MEM_SLOTS,
        device_state: DeviceStateHandler | None = None,
    ) -> None:
        if num_request_queues < 1:
            raise ValueError("a virtio-fs device needs at least one request queue")
        self._runner = runner
        self._config = virtio_fs_config(tag, num_request_queues) if tag is not None else None
        self._max_mem_slots = max_mem_slots
        self.vrings = [Vring(index) for index in range(1 + num_request_queues)]
        self.offered_protocol_features = (
            BASE_PROTOCOL_FEATURES
            | (ProtocolFeature.CONFIG if tag is not None else 0)
            | (ProtocolFeature.DEVICE_STATE if device_state is not None else 0)
        )
        self._device_state = device_state
        self._dirty_log: DirtyLog | None = None
        self.acked_features = 0
        self.acked_protocol_features = 0
        self._owned = False
        self._memory: GuestMemory | None = None
        self._backend_req_fd = -1
        self._handlers: dict[int, _Handler] = {
            FrontendRequest.GET_FEATURES: self._get_features,
            FrontendRequest.SET_FEATURES: self._set_features,
            FrontendRequest.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            FrontendRequest.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            FrontendRequest.SET_OWNER: self._set_owner,
            FrontendRequest.RESET_OWNER: self._reset_owner,
            FrontendRequest.SET_MEM_TABLE: self._set_mem_table,
            FrontendRequest.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            FrontendRequest.ADD_MEM_REG: self._add_mem_reg,
            FrontendRequest.REM_MEM_REG: self._rem_mem_reg,
            FrontendRequest.SET_VRING_NUM: self._set_vring_num,
            FrontendRequest.SET_VRING_ADDR: self._set_vring_addr,
            FrontendRequest.SET_VRING_BASE: self._set_vring_base,
            FrontendRequest.GET_VRING_BASE: self._get_vring_base,
            FrontendRequest.SET_VRING_KICK: self._set_vring_kick,
            FrontendRequest.SET_VRING_CALL: self._set_vring_call,
            FrontendRequest.SET_VRING_ERR: self._set_vring_err,
            FrontendRequest.SET_VRING_ENABLE: self._set_vring_enable,
            FrontendRequest.GET_QUEUE_NUM: self._get_queue_num,
            FrontendRequest.GET_CONFIG: self._get_config,
            FrontendRequest.SET_CONFIG: self._set_config,
            FrontendRequest.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            FrontendRequest.RESET_DEVICE: self._reset_device,
            FrontendRequest.SET_LOG_BASE: self._set_log_base,
            FrontendRequest.SET_LOG_FD: self._set_log_fd,
            FrontendRequest.SET_DEVICE_STATE_FD: self._set_device_state_fd,
            FrontendRequest.CHECK_DEVICE_STATE: self._check_device_state,
        }

    # ---- public surface -------------------------------------------------------------

    @property
    def memory(self) -> GuestMemory | None:
        return self._memory

    def current_memory(self) -> GuestMemory | None:
        """The memory table now; workers call this at each wake-up."""
        return self._memory

    @property
    def backend_req_fd(self) -> int:
        return self._backend_req_fd

    def handle_message(self, header: Header, payload: bytes, fds: list[int]) -> bytes | None:
        """Apply one request; return the complete reply message to send, if any.

        Takes ownership of ``fds``.  Raises :class:`FrontendProtocolError` when the connection
        must end.
        """
        fds = list(fds)
        try:
            return self._dispatch(header, payload, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        """Stop every ring and close every fd we hold; the connection is over."""
        self._stop_all_rings()
        for vring in self.vrings:
            vring.close_fds()
            vring.clear()
        _close(self._backend_req_fd)
        self._backend_req_fd = -1
        self._memory = None

    # ---- dispatch -------------------------------------------------------------------

    def _dispatch(self, header: Header, payload: bytes, fds: list[int]) -> bytes | None:
        request = header.request
        name = msg.request_name(request)
        if len(payload) != header.size:
            raise FrontendProtocolError(
                f"{name}: header announces {header.size} payload bytes, got {len(payload)}"
            )
        try:
            msg.check_payload_size(request, len(payload))
        except msg.MalformedMessage as err:
            raise FrontendProtocolError(str(err)) from err
        lowest, highest = msg.fd_limits(request)
        if not lowest <= len(fds) <= highest:
            raise FrontendProtocolError(
                f"{name}: carries {len(fds)} file descriptors, expected "
                f"{lowest if lowest == highest else f'{lowest} to {highest}'}"
            )
        logger.debug("front-end request %s (flags %#x, %d bytes, %d fds)",
                     name, header.flags, header.size, len(fds))
        needs_body = request in msg.REQUESTS_WITH_REPLY
        handler = self._handlers.get(request)
        try:
            if handler is None:
                raise RequestRefused("request not supported by this back-end")
            body = handler(payload, fds)
        except msg.MalformedMessage as err:
            raise FrontendProtocolError(f"{name}: {err}") from err
        except RequestRefused as err:
            if needs_body:
                raise FrontendProtocolError(
                    f"{name} refused and the front-end expects a reply: {err}"
                ) from err
            logger.error("refusing front-end request %s: %s", name, str(err))
            return self._ack(header, success=False)
        if body is not None:
            return msg.encode_reply(request, body)
        return self._ack(header, success=True)

    def _ack(self, header: Header, *, success: bool) -> bytes | None:
        if header.need_reply and self.acked_protocol_features & ProtocolFeature.REPLY_ACK:
            return msg.encode_reply(header.request, msg.encode_u64(0 if success else 1))
        return None

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise RequestRefused(f"ring index {index} out of range (device has {len(self.vrings)})")
        return self.vrings[index]

    # ---- features and ownership -----------------------------------------------------

    def _get_features(self, payload: bytes, fds: list[int]) -> bytes:
        return msg.encode_u64(OFFERED_FEATURES)

    def _set_features(self, payload: bytes, fds: list[int]) -> None:
        features = msg.decode_u64(payload)
        unknown = features & ~OFFERED_FEATURES
        if unknown:
            raise RequestRefused(f"features {unknown:#x} were not offered")
        self.acked_features = features
        logger.debug("acked virtio features %#x", features)
        self._apply_dirty_log()
        if not features & VirtioFeature.PROTOCOL_FEATURES:
            # Without protocol features there is no SET_VRING_ENABLE: rings are enabled now.
            for vring in self.vrings:
                self._set_enabled(vring, True)

    def _get_protocol_features(self, payload: bytes, fds: list[int]) -> bytes:
        return msg.encode_u64(self.offered_protocol_features)

    def _set_protocol_features(self, payload: bytes, fds: list[int]) -> None:
        features = msg.decode_u64(payload)
        unknown = features & ~self.offered_protocol_features
        if unknown:
            raise RequestRefused(f"protocol features {unknown:#x} were not offered")
        self.acked_protocol_features = features
        logger.debug("acked protocol features %#x", features)

    def _set_owner(self, payload: bytes, fds: list[int]) -> None:
        if self._owned:
            raise RequestRefused("the device already has an owner")
        self._owned = True

    def _reset_owner(self, payload: bytes, fds: list[int]) -> None:
        logger.warning("front-end sent the deprecated RESET_OWNER; stopping all rings")
        self._reset_rings()
        self.acked_features = 0
        self._owned = False

    def _reset_device(self, payload: bytes, fds: list[int]) -> None:
        logger.info("front-end reset the device")
        self._reset_rings()
        self.acked_features = 0
        self._apply_dirty_log()
        self._runner.reset_device()

    # ---- memory ---------------------------------------------------------------------

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        regions = msg.decode_memory_table(payload)
        if len(regions) != len(fds):
            raise FrontendProtocolError(
                f"SET_MEM_TABLE: {len(regions)} regions but {len(fds)} file descriptors"
            )
        try:
            mapped = [
                map_region(fd, region.guest_phys_addr, region.memory_size,
                           region.userspace_addr, region.mmap_offset)
                for fd, region in zip(fds, regions)
            ]
            table = GuestMemory(mapped)
        except GuestMemoryError as err:
            raise RequestRefused(f"{err}; {GUEST_MEMORY_HINT}") from err
        self._memory = table
        logger.debug("memory table: %r", table)
        self._memory_replaced()

    def _get_max_mem_slots(self, payload: bytes, fds: list[int]) -> bytes:
        return msg.encode_u64(self._max_mem_slots)

    def _add_mem_reg(self, payload: bytes, fds: list[int]) -> None:
        region = msg.decode_single_region(payload)
        current = self._memory if self._memory is not None else GuestMemory()
        if len(current) >= self._max_mem_slots:
            raise RequestRefused(f"all {self._max_mem_slots} memory slots are in use")
        try:
            mapped = map_region(fds[0], region.guest_phys_addr, region.memory_size,
                                region.userspace_addr, region.mmap_offset)
            self._memory = current.with_region(mapped)
        except GuestMemoryError as err:
            raise RequestRefused(f"{err}; {GUEST_MEMORY_HINT}") from err
        logger.debug("added memory region %s", mapped.describe())
        self._memory_replaced()

    def _rem_mem_reg(self, payload: bytes, fds: list[int]) -> None:
        region = msg.decode_single_region(payload)
        if self._memory is None:
            raise RequestRefused("no memory table to remove a region from")
        try:
            self._memory, removed = self._memory.without_region(
                region.guest_phys_addr, region.memory_size, region.userspace_addr
            )
        except GuestMemoryError as err:
            raise RequestRefused(str(err)) from err
        logger.debug("removed memory region %s", removed.describe())
        self._memory_replaced()

    def _memory_replaced(self) -> None:
        """Running workers must follow the new table before they walk another chain: the
        front-end acknowledges the change to the guest only after this message's reply."""
        for vring in self.vrings:
            if vring.running:
                self._runner.wake_ring(vring)

    # ---- rings ----------------------------------------------------------------------

    def _set_vring_num(self, payload: bytes, fds: list[int]) -> None:
        state = msg.decode_vring_state(payload)
        vring = self._vring(state.index)
        if vring.running:
            raise RequestRefused(f"ring {state.index} is running; its size cannot change")
        try:
            check_queue_size(state.num)
        except GuestProtocolError as err:
            raise RequestRefused(str(err)) from err
        vring.size = state.num

    def _set_vring_addr(self, payload: bytes, fds: list[int]) -> None:
        addr = msg.decode_vring_addr(payload)
        vring = self._vring(addr.index)
        if self._memory is None:
            raise RequestRefused(f"ring addresses given before any memory table; "
                                 f"{GUEST_MEMORY_HINT}")
        try:
            desc = self._memory.vva_to_gpa(addr.desc_user_addr)
            avail = self._memory.vva_to_gpa(addr.avail_user_addr)
            used = self._memory.vva_to_gpa(addr.used_user_addr)
        except GuestMemoryError as err:
            raise RequestRefused(f"ring {addr.index}: {err}; {GUEST_MEMORY_HINT}") from err
        moved = (desc, avail, used) != (vring.desc_gpa, vring.avail_gpa, vring.used_gpa)
        if moved and vring.running:
            self._stop_ring(vring)
        vring.desc_gpa, vring.avail_gpa, vring.used_gpa = desc, avail, used
        vring.addr_flags = addr.flags
        vring.log_guest_addr = addr.log_guest_addr
        self._maybe_start(vring)

    def _set_vring_base(self, payload: bytes, fds: list[int]) -> None:
        state = msg.decode_vring_state(payload)
        vring = self._vring(state.index)
        if vring.running:
            raise RequestRefused(f"ring {state.index} is running; its base cannot change")
        if state.num > 0xFFFF:
            raise RequestRefused(f"ring {state.index}: base {state.num:#x} exceeds 16 bits")
        vring.base = state.num

    def _get_vring_base(self, payload: bytes, fds: list[int]) -> bytes:
        state = msg.decode_vring_state(payload)
        vring = self._vring(state.index)
        if vring.running:
            self._stop_ring(vring)
        # A stopped ring restarts only on a new SET_VRING_KICK, never on a stale kick fd.
        _close(vring.kick_fd)
        vring.kick_fd = -1
        return msg.encode_vring_state(vring.index, vring.base)

    def _set_vring_kick(self, payload: bytes, fds: list[int]) -> None:
        index, nofd = self._vring_fd_payload(payload, fds)
        vring = self._vring(index)
        if vring.running:
            self._stop_ring(vring)
        _close(vring.kick_fd)
        vring.kick_fd = -1 if nofd else fds.pop()
        if nofd:
            logger.warning("ring %d: front-end asks for polling, which is not supported; "
                           "the ring stays stopped", index)
        self._maybe_start(vring)

    def _set_vring_call(self, payload: bytes, fds: list[int]) -> None:
        index, nofd = self._vring_fd_payload(payload, fds)
        vring = self._vring(index)
        _close(vring.replace_call_fd(-1 if nofd else fds.pop()))

    def _set_vring_err(self, payload: bytes, fds: list[int]) -> None:
        index, nofd = self._vring_fd_payload(payload, fds)
        vring = self._vring(index)
        _close(vring.err_fd)
        vring.err_fd = -1 if nofd else fds.pop()

    def _vring_fd_payload(self, payload: bytes, fds: list[int]) -> tuple[int, bool]:
        index, nofd = msg.decode_vring_fd_payload(payload)
        if nofd == bool(fds):
            raise FrontendProtocolError(
                f"ring {index}: NOFD flag is {'set' if nofd else 'clear'} but "
                f"{len(fds)} file descriptors came with the message"
            )
        return index, nofd

    def _set_vring_enable(self, payload: bytes, fds: list[int]) -> None:
        state = msg.decode_vring_state(payload)
        vring = self._vring(state.index)
        if not self.acked_features & VirtioFeature.PROTOCOL_FEATURES:
            raise RequestRefused("SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES")
        if state.num not in (0, 1):
            raise RequestRefused(f"ring {state.index}: enable value {state.num} is not 0 or 1")
        self._set_enabled(vring, bool(state.num))

    def _set_enabled(self, vring: Vring, enabled: bool) -> None:
        vring.enabled = enabled
        if vring.running:
            # Either way the worker must look: to drain, or to stop draining.
            self._runner.wake_ring(vring)

    def _get_queue_num(self, payload: bytes, fds: list[int]) -> bytes:
        return msg.encode_u64(len(self.vrings))

    def _maybe_start(self, vring: Vring) -> None:
        """Start the ring's worker once it has a kick fd, a size, addresses and memory."""
        if vring.running or vring.kick_fd < 0 or not vring.configured or self._memory is None:
            return
        assert vring.desc_gpa is not None and vring.avail_gpa is not None
        assert vring.used_gpa is not None
        try:
            queue = split_queue_class()(
                vring.size,
                vring.desc_gpa,
                vring.avail_gpa,
                vring.used_gpa,
                self._memory,
                event_idx=bool(self.acked_features & VirtioFeature.RING_EVENT_IDX),
                indirect=bool(self.acked_features & VirtioFeature.RING_INDIRECT_DESC),
                last_avail=vring.base,
            )
        except GuestProtocolError as err:
            raise RequestRefused(f"ring {vring.index} cannot start: {err}") from err
        if self._device_state is not None:
            self._device_state.ring_starting()
        self._runner.start_ring(vring, queue, self.current_memory)
        vring.running = True
        logger.debug("ring %d started (size %d, base %d, %s)", vring.index, vring.size,
                     vring.base, type(queue).__name__)

    def _stop_ring(self, vring: Vring) -> None:
        self._runner.stop_ring(vring)
        vring.running = False
        logger.debug("ring %d stopped at base %d", vring.index, vring.base)

    def _stop_all_rings(self) -> None:
        for vring in self.vrings:
            if vring.running:
                self._stop_ring(vring)

    def _reset_rings(self) -> None:
        self._stop_all_rings()
        for vring in self.vrings:
            vring.close_fds()
            vring.clear()

    # ---- migration: dirty logging and device state -----------------------------------

    def _set_log_base(self, payload: bytes, fds: list[int]) -> bytes:
        area = msg.decode_log(payload)
        if not fds:
            raise FrontendProtocolError("SET_LOG_BASE without a log fd (LOG_SHMFD is the only "
                                        "logging this back-end offers)")
        try:
            dirty_log = DirtyLog.map(fds[0], area.mmap_size, area.mmap_offset)
        except (OSError, ValueError, OverflowError) as err:
            raise FrontendProtocolError(f"SET_LOG_BASE: cannot map {area.mmap_size:#x} bytes at "
                                        f"offset {area.mmap_offset:#x}: {err}") from err
        self._dirty_log = dirty_log
        self._apply_dirty_log()
        logger.info("dirty log of %d bytes installed", area.mmap_size)
        # QEMU waits for a reply to SET_LOG_BASE with LOG_SHMFD and expects no payload.
        return b""

    def _set_log_fd(self, payload: bytes, fds: list[int]) -> None:
        """The eventfd to signal when the log changes size; we never resize it, so the fd
        is closed unused."""

    def _apply_dirty_log(self) -> None:
        """Hand the log to every ring while LOG_ALL is acked, take it back when it is not."""
        active = self._dirty_log if self.acked_features & VirtioFeature.LOG_ALL else None
        for vring in self.vrings:
            if vring.dirty_log is not active:
                vring.dirty_log = active
        if active is None:
            return
        # Pages written before logging started are sent by the first pass anyway; the rings
        # themselves are marked now so that QEMU re-sends their current contents.
        for vring in self.vrings:
            if vring.configured and vring.used_gpa is not None:
                used_bytes = 4 + 8 * vring.size + 2
                active.mark(vring.used_gpa, used_bytes)

    def _set_device_state_fd(self, payload: bytes, fds: list[int]) -> bytes:
        transfer = msg.decode_device_state_transfer(payload)
        if self._device_state is None:
            logger.error("SET_DEVICE_STATE_FD, but no migration support is loaded")
            return msg.encode_u64(_DEVICE_STATE_NO_FD | _DEVICE_STATE_FAILED)
        if transfer.phase != _PHASE_STOPPED or transfer.direction not in (0, 1):
            logger.error("SET_DEVICE_STATE_FD: direction %d, phase %d not supported (only the "
                         "stopped phase is)", transfer.direction, transfer.phase)
            return msg.encode_u64(_DEVICE_STATE_NO_FD | _DEVICE_STATE_FAILED)
        running = [vring.index for vring in self.vrings if vring.running]
        if running:
            logger.error("SET_DEVICE_STATE_FD while rings %s still run", running)
            return msg.encode_u64(_DEVICE_STATE_NO_FD | _DEVICE_STATE_FAILED)
        self._device_state.start(transfer.direction, fds.pop())
        return msg.encode_u64(_DEVICE_STATE_NO_FD)

    def _check_device_state(self, payload: bytes, fds: list[int]) -> bytes:
        ok = self._device_state is not None and self._device_state.check()
        return msg.encode_u64(0 if ok else 1)

    # ---- config space and back-end channel ---------------------------------------------

    def _get_config(self, payload: bytes, fds: list[int]) -> bytes:
        request = msg.decode_config(payload)
        if self._config is None:
            logger.error("GET_CONFIG without a configured tag; answering with an empty reply")
            return msg.encode_config(request.offset, b"", request.flags)
        end = request.offset + request.size
        if end > msg.MAX_CONFIG_SIZE:
            logger.error("GET_CONFIG of %d bytes at offset %d is out of bounds",
                         request.size, request.offset)
            return msg.encode_config(request.offset, b"", request.flags)
        space = self._config.ljust(msg.MAX_CONFIG_SIZE, b"\0")
        return msg.encode_config(request.offset, space[request.offset : end], request.flags)

    def _set_config(self, payload: bytes, fds: list[int]) -> None:
        request = msg.decode_config(payload)
        logger.debug("ignoring SET_CONFIG of %d bytes at offset %d", request.size, request.offset)

    def _set_backend_req_fd(self, payload: bytes, fds: list[int]) -> None:
        _close(self._backend_req_fd)
        self._backend_req_fd = fds.pop()
