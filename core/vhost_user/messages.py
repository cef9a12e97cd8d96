"""Wire format of the vhost-user protocol, for both peers, without any I/O.

Every vhost-user message is a 12-byte header (request code, flags, payload size: three
native-endian u32; we only run on little-endian hosts, so the layouts below are spelled
little-endian to make that assumption explicit) followed by ``size`` bytes of payload, with
file descriptors travelling beside it as SCM_RIGHTS ancillary data.

This module only turns numbers into bytes and back.  It knows nothing about sockets, state
or which peer is at fault when a payload is malformed: decoding errors are raised as
:class:`MalformedMessage`, and the caller decides whether that is the front-end's fault
(the back-end turns it into ``FrontendProtocolError``) or the back-end's (a test driver).

Layouts follow qemu ``docs/interop/vhost-user.rst``; the front-end request codes and the
protocol feature bits are the complete lists from that document, so a peer can at least
name every message it receives, including the ones it does not implement.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import NamedTuple

# --------------------------------------------------------------------------------------
# Request codes
# --------------------------------------------------------------------------------------


class FrontendRequest(enum.IntEnum):
    """Requests the front-end (QEMU) sends on the main socket; the back-end replies."""

    NONE = 0
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class BackendRequest(enum.IntEnum):
    """Requests the back-end sends on the back-end channel (SET_BACKEND_REQ_FD)."""

    NONE = 0
    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8


def request_name(code: int) -> str:
    """A readable name for a front-end request code, also for codes we do not know."""
    try:
        return FrontendRequest(code).name
    except ValueError:
        return f"UNKNOWN_REQUEST({code})"


# --------------------------------------------------------------------------------------
# Header flags and feature bits
# --------------------------------------------------------------------------------------


class HeaderFlag(enum.IntFlag):
    """The ``flags`` word of the header: a 2-bit version and two single-bit flags."""

    VERSION = 0x1
    REPLY = 0x4
    NEED_REPLY = 0x8


#: The protocol version lives in the two low bits of ``flags``; only 1 exists.
VERSION_MASK = 0x3
PROTOCOL_VERSION = 0x1


class ProtocolFeature(enum.IntFlag):
    """``VHOST_USER_PROTOCOL_F_*``, negotiated by GET/SET_PROTOCOL_FEATURES (as masks)."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16
    XEN_MMAP = 1 << 17
    SHARED_OBJECT = 1 << 18
    DEVICE_STATE = 1 << 19


class VirtioFeatureBit(enum.IntEnum):
    """Bit *numbers* of the virtio/vhost feature bits this project deals with."""

    LOG_ALL = 26  # VHOST_F_LOG_ALL: dirty-page logging for live migration
    RING_INDIRECT_DESC = 28
    RING_EVENT_IDX = 29
    PROTOCOL_FEATURES = 30  # VHOST_USER_F_PROTOCOL_FEATURES (reuses a reserved virtio bit)
    VERSION_1 = 32
    ACCESS_PLATFORM = 33  # a.k.a. IOMMU_PLATFORM
    RING_PACKED = 34


class VirtioFeature(enum.IntFlag):
    """The same bits as masks, for building and testing feature words."""

    LOG_ALL = 1 << VirtioFeatureBit.LOG_ALL
    RING_INDIRECT_DESC = 1 << VirtioFeatureBit.RING_INDIRECT_DESC
    RING_EVENT_IDX = 1 << VirtioFeatureBit.RING_EVENT_IDX
    PROTOCOL_FEATURES = 1 << VirtioFeatureBit.PROTOCOL_FEATURES
    VERSION_1 = 1 << VirtioFeatureBit.VERSION_1
    ACCESS_PLATFORM = 1 << VirtioFeatureBit.ACCESS_PLATFORM
    RING_PACKED = 1 << VirtioFeatureBit.RING_PACKED


#: SET_VRING_KICK/CALL/ERR payload: bits 0-7 are the ring index, bit 8 says "no fd attached".
VRING_INDEX_MASK = 0xFF
VRING_NOFD_FLAG = 0x100

#: ``flags`` of SET_VRING_ADDR: bit 0 asks for used-ring writes to be logged (migration).
VRING_ADDR_F_LOG = 0x1

#: SET_CONFIG ``flags`` values.
CONFIG_FLAG_WRITABLE = 0
CONFIG_FLAG_MIGRATION = 1

#: Regions a SET_MEM_TABLE may carry (VHOST_MEMORY_BASELINE_NREGIONS in QEMU).
MAX_MEM_TABLE_REGIONS = 8
#: The largest config-space access QEMU makes (VHOST_USER_MAX_CONFIG_SIZE).
MAX_CONFIG_SIZE = 256
#: No legitimate payload is anywhere near this; it bounds what we are willing to read.
MAX_PAYLOAD_SIZE = 4096
#: SCM_RIGHTS slots we accept per message; more than any request legitimately carries.
MAX_FDS_PER_MESSAGE = 32

# --------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------

HEADER = struct.Struct("<III")  # request, flags, size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log (user addrs)
MEMORY_TABLE_HEADER = struct.Struct("<II")  # nregions, padding
MEMORY_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
SINGLE_MEMORY_REGION = struct.Struct("<QQQQQ")  # padding, then one MEMORY_REGION
LOG = struct.Struct("<QQ")  # mmap_size, mmap_offset
IOTLB = struct.Struct("<QQQBB6x")  # iova, size, uaddr, perm, type (padded to 8)
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags; ``size`` bytes follow
VRING_AREA = struct.Struct("<QQQ")  # u64 (index and flags), size, offset
INFLIGHT = struct.Struct("<QQHH4x")  # mmap_size, mmap_offset, num_queues, queue_size
DEVICE_STATE_TRANSFER = struct.Struct("<II")  # direction, phase
SHARED_OBJECT_UUID_SIZE = 16

assert HEADER.size == 12
assert VRING_ADDR.size == 40
assert MEMORY_REGION.size == 32
assert SINGLE_MEMORY_REGION.size == 40
assert INFLIGHT.size == 24
assert IOTLB.size == 32


class MalformedMessage(ValueError):
    """A header or payload does not have the layout its request code requires."""


# --------------------------------------------------------------------------------------
# Decoded values
# --------------------------------------------------------------------------------------


class Header(NamedTuple):
    request: int
    flags: int
    size: int

    @property
    def version(self) -> int:
        return self.flags & VERSION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.NEED_REPLY)


class VringState(NamedTuple):
    index: int
    num: int


class VringAddr(NamedTuple):
    """Ring addresses as the front-end's *userspace virtual* addresses, not guest-physical."""

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int


class MemoryRegion(NamedTuple):
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


class ConfigSpace(NamedTuple):
    offset: int
    size: int
    flags: int
    data: bytes


class LogArea(NamedTuple):
    mmap_size: int
    mmap_offset: int


class Inflight(NamedTuple):
    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


class DeviceStateTransfer(NamedTuple):
    direction: int  # 0 save (back-end -> front-end), 1 load
    phase: int  # 0 stopped


# --------------------------------------------------------------------------------------
# Per-request rules: payload size and number of file descriptors
# --------------------------------------------------------------------------------------

_FDS_NONE = (0, 0)
_FDS_ONE = (1, 1)
_FDS_OPTIONAL = (0, 1)

#: Exact payload size each request must have; requests absent here are variable-sized
#: (SET_MEM_TABLE, GET_CONFIG, SET_CONFIG) and are checked by their decoder.
REQUEST_PAYLOAD_SIZE: dict[FrontendRequest, int] = {
    FrontendRequest.GET_FEATURES: 0,
    FrontendRequest.SET_FEATURES: U64.size,
    FrontendRequest.SET_OWNER: 0,
    FrontendRequest.RESET_OWNER: 0,
    FrontendRequest.SET_LOG_BASE: LOG.size,
    FrontendRequest.SET_LOG_FD: 0,
    FrontendRequest.SET_VRING_NUM: VRING_STATE.size,
    FrontendRequest.SET_VRING_ADDR: VRING_ADDR.size,
    FrontendRequest.SET_VRING_BASE: VRING_STATE.size,
    FrontendRequest.GET_VRING_BASE: VRING_STATE.size,
    FrontendRequest.SET_VRING_KICK: U64.size,
    FrontendRequest.SET_VRING_CALL: U64.size,
    FrontendRequest.SET_VRING_ERR: U64.size,
    FrontendRequest.GET_PROTOCOL_FEATURES: 0,
    FrontendRequest.SET_PROTOCOL_FEATURES: U64.size,
    FrontendRequest.GET_QUEUE_NUM: 0,
    FrontendRequest.SET_VRING_ENABLE: VRING_STATE.size,
    FrontendRequest.SET_BACKEND_REQ_FD: 0,
    FrontendRequest.SET_VRING_ENDIAN: VRING_STATE.size,
    FrontendRequest.RESET_DEVICE: 0,
    FrontendRequest.VRING_KICK: VRING_STATE.size,
    FrontendRequest.GET_MAX_MEM_SLOTS: 0,
    FrontendRequest.ADD_MEM_REG: SINGLE_MEMORY_REGION.size,
    FrontendRequest.REM_MEM_REG: SINGLE_MEMORY_REGION.size,
    FrontendRequest.SET_STATUS: U64.size,
    FrontendRequest.GET_STATUS: 0,
    FrontendRequest.GET_INFLIGHT_FD: INFLIGHT.size,
    FrontendRequest.SET_INFLIGHT_FD: INFLIGHT.size,
    FrontendRequest.SET_DEVICE_STATE_FD: DEVICE_STATE_TRANSFER.size,
    FrontendRequest.CHECK_DEVICE_STATE: 0,
}

#: (minimum, maximum) number of fds each request may carry; absent requests carry none.
#: SET_MEM_TABLE carries one per region, checked against the region count on decode.
#: SET_VRING_KICK/CALL/ERR carry one unless the NOFD flag is set (checked by the handler).
#: REM_MEM_REG "SHOULD" carry none but may carry one, which must be closed unused.
REQUEST_FDS: dict[FrontendRequest, tuple[int, int]] = {
    FrontendRequest.SET_MEM_TABLE: (1, MAX_MEM_TABLE_REGIONS),
    FrontendRequest.SET_LOG_BASE: _FDS_OPTIONAL,
    FrontendRequest.SET_LOG_FD: _FDS_ONE,
    FrontendRequest.SET_VRING_KICK: _FDS_OPTIONAL,
    FrontendRequest.SET_VRING_CALL: _FDS_OPTIONAL,
    FrontendRequest.SET_VRING_ERR: _FDS_OPTIONAL,
    FrontendRequest.SET_BACKEND_REQ_FD: _FDS_ONE,
    FrontendRequest.SET_INFLIGHT_FD: _FDS_ONE,
    FrontendRequest.GPU_SET_SOCKET: _FDS_ONE,
    FrontendRequest.ADD_MEM_REG: _FDS_ONE,
    FrontendRequest.REM_MEM_REG: _FDS_OPTIONAL,
    FrontendRequest.SET_DEVICE_STATE_FD: _FDS_ONE,
}

#: Requests whose reply carries a body of their own; for these NEED_REPLY changes nothing
#: and a REPLY_ACK u64 must not be sent in addition.
REQUESTS_WITH_REPLY: frozenset[FrontendRequest] = frozenset(
    {
        FrontendRequest.GET_FEATURES,
        FrontendRequest.GET_PROTOCOL_FEATURES,
        FrontendRequest.GET_VRING_BASE,
        FrontendRequest.GET_QUEUE_NUM,
        FrontendRequest.GET_CONFIG,
        FrontendRequest.GET_MAX_MEM_SLOTS,
        FrontendRequest.GET_INFLIGHT_FD,
        FrontendRequest.GET_STATUS,
        FrontendRequest.IOTLB_MSG,
        FrontendRequest.POSTCOPY_ADVISE,
        FrontendRequest.POSTCOPY_END,
        FrontendRequest.CREATE_CRYPTO_SESSION,
        FrontendRequest.GET_SHARED_OBJECT,
        FrontendRequest.SET_DEVICE_STATE_FD,
        FrontendRequest.CHECK_DEVICE_STATE,
    }
)


def fd_limits(request: int) -> tuple[int, int]:
    """(minimum, maximum) fds a request may carry; unknown requests may carry none."""
    try:
        return REQUEST_FDS.get(FrontendRequest(request), _FDS_NONE)
    except ValueError:
        return _FDS_NONE


# --------------------------------------------------------------------------------------
# Header and whole-message framing
# --------------------------------------------------------------------------------------


def decode_header(buf: bytes | bytearray | memoryview) -> Header:
    """Parse the 12-byte header; rejects a wrong version or an oversized payload."""
    if len(buf) != HEADER.size:
        raise MalformedMessage(f"vhost-user header is {len(buf)} bytes, expected {HEADER.size}")
    header = Header._make(HEADER.unpack(buf))
    if header.version != PROTOCOL_VERSION:
        raise MalformedMessage(
            f"{request_name(header.request)}: unsupported vhost-user version "
            f"{header.version} (flags {header.flags:#x})"
        )
    if header.size > MAX_PAYLOAD_SIZE:
        raise MalformedMessage(
            f"{request_name(header.request)}: payload of {header.size} bytes exceeds "
            f"the {MAX_PAYLOAD_SIZE}-byte limit"
        )
    return header


def encode_header(request: int, flags: int, size: int) -> bytes:
    return HEADER.pack(request, flags, size)


def encode_request(request: int, payload: bytes = b"", *, need_reply: bool = False) -> bytes:
    """A complete front-end request (header and payload)."""
    flags = HeaderFlag.VERSION | (HeaderFlag.NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    """A complete back-end reply: same request code, VERSION|REPLY flags."""
    return HEADER.pack(request, HeaderFlag.VERSION | HeaderFlag.REPLY, len(payload)) + payload


def check_payload_size(request: int, size: int) -> None:
    """Raise unless ``size`` is the fixed payload size the request needs (if it has one)."""
    try:
        expected = REQUEST_PAYLOAD_SIZE.get(FrontendRequest(request))
    except ValueError:
        return
    if expected is not None and size != expected:
        raise MalformedMessage(
            f"{request_name(request)}: payload is {size} bytes, expected {expected}"
        )


def _exact(layout: struct.Struct, buf: bytes | bytearray | memoryview, what: str) -> tuple:
    if len(buf) != layout.size:
        raise MalformedMessage(f"{what} payload is {len(buf)} bytes, expected {layout.size}")
    return layout.unpack(buf)


# --------------------------------------------------------------------------------------
# Payload codecs
# --------------------------------------------------------------------------------------


def encode_u64(value: int) -> bytes:
    return U64.pack(value)


def decode_u64(buf: bytes | bytearray | memoryview) -> int:
    return _exact(U64, buf, "u64")[0]


def encode_vring_state(index: int, num: int) -> bytes:
    return VRING_STATE.pack(index, num)


def decode_vring_state(buf: bytes | bytearray | memoryview) -> VringState:
    return VringState._make(_exact(VRING_STATE, buf, "vring state"))


def encode_vring_addr(addr: VringAddr) -> bytes:
    return VRING_ADDR.pack(*addr)


def decode_vring_addr(buf: bytes | bytearray | memoryview) -> VringAddr:
    return VringAddr._make(_exact(VRING_ADDR, buf, "vring address"))


def encode_vring_fd_payload(index: int, *, nofd: bool = False) -> bytes:
    """The u64 of SET_VRING_KICK/CALL/ERR."""
    if not 0 <= index <= VRING_INDEX_MASK:
        raise ValueError(f"vring index {index} does not fit in 8 bits")
    return U64.pack(index | (VRING_NOFD_FLAG if nofd else 0))


def decode_vring_fd_payload(buf: bytes | bytearray | memoryview) -> tuple[int, bool]:
    """(ring index, nofd) from the u64 of SET_VRING_KICK/CALL/ERR; other bits are invalid."""
    value = decode_u64(buf)
    if value & ~(VRING_INDEX_MASK | VRING_NOFD_FLAG):
        raise MalformedMessage(f"vring fd payload {value:#x} has reserved bits set")
    return value & VRING_INDEX_MASK, bool(value & VRING_NOFD_FLAG)


def encode_memory_table(regions: Iterable[MemoryRegion]) -> bytes:
    regions = list(regions)
    if len(regions) > MAX_MEM_TABLE_REGIONS:
        raise ValueError(f"{len(regions)} regions exceed {MAX_MEM_TABLE_REGIONS}")
    parts = [MEMORY_TABLE_HEADER.pack(len(regions), 0)]
    parts.extend(MEMORY_REGION.pack(*region) for region in regions)
    return b"".join(parts)


def decode_memory_table(buf: bytes | bytearray | memoryview) -> list[MemoryRegion]:
    """The regions of SET_MEM_TABLE; the payload must hold exactly ``nregions`` entries.

    QEMU sends only the regions in use (8 + 32*n bytes); a payload padded to all eight
    slots is also accepted, since some front-ends send the whole C union.
    """
    if len(buf) < MEMORY_TABLE_HEADER.size:
        raise MalformedMessage(f"memory table payload is only {len(buf)} bytes")
    nregions, _padding = MEMORY_TABLE_HEADER.unpack_from(buf, 0)
    if not 1 <= nregions <= MAX_MEM_TABLE_REGIONS:
        raise MalformedMessage(
            f"memory table has {nregions} regions, expected 1..{MAX_MEM_TABLE_REGIONS}"
        )
    exact = MEMORY_TABLE_HEADER.size + nregions * MEMORY_REGION.size
    full = MEMORY_TABLE_HEADER.size + MAX_MEM_TABLE_REGIONS * MEMORY_REGION.size
    if len(buf) not in (exact, full):
        raise MalformedMessage(
            f"memory table with {nregions} regions has a {len(buf)}-byte payload, "
            f"expected {exact}"
        )
    return [
        MemoryRegion._make(
            MEMORY_REGION.unpack_from(buf, MEMORY_TABLE_HEADER.size + i * MEMORY_REGION.size)
        )
        for i in range(nregions)
    ]


def encode_single_region(region: MemoryRegion) -> bytes:
    """Payload of ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region."""
    return SINGLE_MEMORY_REGION.pack(0, *region)


def decode_single_region(buf: bytes | bytearray | memoryview) -> MemoryRegion:
    _padding, *fields = _exact(SINGLE_MEMORY_REGION, buf, "single memory region")
    return MemoryRegion._make(fields)


def encode_config(offset: int, data: bytes, flags: int = CONFIG_FLAG_WRITABLE) -> bytes:
    """GET_CONFIG request (``data`` = zeros of the wanted size), its reply, or SET_CONFIG."""
    return CONFIG_HEADER.pack(offset, len(data), flags) + bytes(data)


def decode_config(buf: bytes | bytearray | memoryview) -> ConfigSpace:
    """Config-space payload; ``size`` must match the bytes that follow and be bounded."""
    if len(buf) < CONFIG_HEADER.size:
        raise MalformedMessage(f"config payload is only {len(buf)} bytes")
    offset, size, flags = CONFIG_HEADER.unpack_from(buf, 0)
    if size > MAX_CONFIG_SIZE:
        raise MalformedMessage(f"config access of {size} bytes exceeds {MAX_CONFIG_SIZE}")
    if len(buf) != CONFIG_HEADER.size + size:
        raise MalformedMessage(
            f"config payload is {len(buf)} bytes but announces {size} data bytes"
        )
    return ConfigSpace(offset, size, flags, bytes(buf[CONFIG_HEADER.size :]))


def encode_log(area: LogArea) -> bytes:
    return LOG.pack(*area)


def decode_log(buf: bytes | bytearray | memoryview) -> LogArea:
    return LogArea._make(_exact(LOG, buf, "log"))


def encode_inflight(inflight: Inflight) -> bytes:
    return INFLIGHT.pack(*inflight)


def decode_inflight(buf: bytes | bytearray | memoryview) -> Inflight:
    return Inflight._make(_exact(INFLIGHT, buf, "inflight"))


def encode_device_state_transfer(transfer: DeviceStateTransfer) -> bytes:
    return DEVICE_STATE_TRANSFER.pack(*transfer)


def decode_device_state_transfer(buf: bytes | bytearray | memoryview) -> DeviceStateTransfer:
    return DeviceStateTransfer._make(_exact(DEVICE_STATE_TRANSFER, buf, "device state transfer"))
