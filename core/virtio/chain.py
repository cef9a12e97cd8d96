"""Walking one split-ring descriptor chain into host buffers.

The descriptor table lives in guest memory and the guest can rewrite it while we read it.  So
each descriptor is unpacked exactly once into plain integers, every decision is taken on those
copies, and nothing is read twice (a second read could see different values: the classic
double-fetch bug).  The walk is bounded: a direct chain may visit at most ``queue_size``
descriptors and an indirect table at most its own length, so a loop in the ``next`` links ends
as an error after at most that many steps rather than spinning forever.

Rules enforced, from the virtio 1.x split virtqueue section:

* every buffer address range lies inside guest memory;
* ``next`` indices stay inside the table being walked;
* device-readable buffers all come before device-writable ones;
* an INDIRECT descriptor needs VIRTIO_F_RING_INDIRECT_DESC, has no NEXT flag, points to a
  table whose length is a non-zero multiple of 16 with at most ``queue_size`` entries, and the
  indirect table itself contains no INDIRECT descriptor (one level only).  Zero or more direct
  descriptors may precede it.

Zero-length buffers are skipped: they carry nothing, and skipping them spares a translation.
"""

from __future__ import annotations

import struct

from virtiofsd.errors import GuestProtocolError
from virtiofsd.virtio.memory import GuestMemory, GuestMemoryError

__all__ = [
    "DESCRIPTOR",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "DescriptorChain",
    "InvalidChainError",
    "walk_chain",
]

DESCRIPTOR = struct.Struct("<QIHH")  # addr, len, flags, next
DESCRIPTOR_SIZE = DESCRIPTOR.size

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4

_unpack_descriptor = DESCRIPTOR.unpack_from


class InvalidChainError(GuestProtocolError):
    """A descriptor chain breaks the rules; ``head`` is its head index if that one was sane.

    The caller completes a sane head with a used length of 0, so the guest gets its buffer
    back (and its request fails) instead of waiting for it forever.
    """

    def __init__(self, head: int | None, message: str) -> None:
        self.head = head
        super().__init__(message)


class DescriptorChain:
    """The buffers of one available chain, as views into guest memory.

    ``readable`` holds the device-readable bytes (the request), in order; ``writable`` the
    device-writable ones (room for the reply).  How the bytes are split into views carries no
    meaning: this walker gives one view per descriptor (two for a buffer spanning two adjacent
    memory regions), the compiled one (:mod:`virtiofsd.virtio.native_queue`) merges adjacent
    buffers and hands a small request over as one copy.
    """

    __slots__ = ("head", "readable", "readable_bytes", "writable", "writable_bytes")

    def __init__(self, head: int, readable: list[memoryview], writable: list[memoryview],
                 writable_bytes: int, readable_bytes: int) -> None:
        """``writable_bytes`` and ``readable_bytes`` are the totals of ``writable`` and
        ``readable``: the walker counts them on the way, sparing a sum for every request."""
        self.head = head
        self.readable = readable
        self.writable = writable
        self.writable_bytes = writable_bytes
        self.readable_bytes = readable_bytes

    def __repr__(self) -> str:
        return (
            f"DescriptorChain(head={self.head}, readable={self.readable_bytes}B in "
            f"{len(self.readable)}, writable={self.writable_bytes}B in {len(self.writable)})"
        )


def walk_chain(
    mem: GuestMemory,
    table: memoryview,
    queue_size: int,
    head: int,
    *,
    indirect_allowed: bool,
) -> DescriptorChain:
    """Read the chain starting at descriptor ``head`` of ``table`` (the ring's descriptor table).

    ``table`` must hold ``queue_size`` descriptors and ``head`` must be below ``queue_size``.
    Raises :class:`InvalidChainError` (carrying ``head``) on any rule violation.
    """
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    extend = mem.extend_views
    index = head
    table_len = queue_size
    visited = 0
    in_indirect = False
    writing = False
    writable_bytes = 0
    readable_bytes = 0
    region_start, region_end, region_view = 1, 0, None  # no region yet
    while True:
        if visited == table_len:
            where = "indirect table" if in_indirect else "descriptor chain"
            raise InvalidChainError(
                head, f"chain {head}: {where} has more than {table_len} descriptors (a loop?)"
            )
        visited += 1
        addr, length, flags, next_index = _unpack_descriptor(table, index * DESCRIPTOR_SIZE)

        if flags & VIRTQ_DESC_F_INDIRECT:
            table = _indirect_table(mem, head, index, addr, length, flags, queue_size,
                                    in_indirect=in_indirect, allowed=indirect_allowed)
            table_len = length // DESCRIPTOR_SIZE
            in_indirect = True
            visited = 0
            index = 0
            continue

        if flags & VIRTQ_DESC_F_WRITE:
            writing = True
            out = writable
            writable_bytes += length
        elif writing:
            raise InvalidChainError(
                head,
                f"chain {head}: device-readable descriptor {index} follows a "
                "device-writable one",
            )
        else:
            out = readable
            readable_bytes += length
        if length:
            # Inside the region the previous buffer was in (the usual case, and every page of
            # a big request): slice it here; else let the memory table translate and check.
            if region_start <= addr and addr + length <= region_end:
                offset = addr - region_start
                out.append(region_view[offset:offset + length])
            else:
                try:
                    extend(out, addr, length)
                except GuestMemoryError as err:
                    raise InvalidChainError(head, f"chain {head}, descriptor {index}: {err}") from err
                region_start, region_end, region_view = mem.region_bounds(addr)

        if not flags & VIRTQ_DESC_F_NEXT:
            return DescriptorChain(head, readable, writable, writable_bytes, readable_bytes)
        if next_index >= table_len:
            raise InvalidChainError(
                head,
                f"chain {head}: descriptor {index} links to {next_index}, outside a table "
                f"of {table_len}",
            )
        index = next_index


def _indirect_table(
    mem: GuestMemory,
    head: int,
    index: int,
    addr: int,
    length: int,
    flags: int,
    queue_size: int,
    *,
    in_indirect: bool,
    allowed: bool,
) -> memoryview:
    """Validate an INDIRECT descriptor and return the view of the table it points to."""
    problem = None
    if in_indirect:
        problem = "an indirect table contains another indirect descriptor"
    elif not allowed:
        problem = "indirect descriptor used but VIRTIO_F_RING_INDIRECT_DESC was not negotiated"
    elif flags & VIRTQ_DESC_F_NEXT:
        problem = "indirect descriptor also has the NEXT flag"
    elif length == 0 or length % DESCRIPTOR_SIZE:
        problem = f"indirect table length {length} is not a non-zero multiple of {DESCRIPTOR_SIZE}"
    elif length // DESCRIPTOR_SIZE > queue_size:
        problem = (
            f"indirect table of {length // DESCRIPTOR_SIZE} descriptors exceeds the queue "
            f"size {queue_size}"
        )
    if problem is not None:
        raise InvalidChainError(head, f"chain {head}, descriptor {index}: {problem}")
    try:
        return mem.translate(addr, length)
    except GuestMemoryError as err:
        raise InvalidChainError(
            head, f"chain {head}, descriptor {index}: indirect table: {err}"
        ) from err
