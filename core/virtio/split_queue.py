"""The device side of a split virtqueue (virtio 1.x, "Split Virtqueues").

Layout in guest memory, all little-endian, for a queue of ``size`` entries (a power of two):

* descriptor table: ``size`` x {addr u64, len u32, flags u16, next u16};
* available ring (driver -> device): flags u16, idx u16, ring[size] u16, used_event u16;
* used ring (device -> driver): flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16.

The two ``*_event`` fields exist only with VIRTIO_F_RING_EVENT_IDX.  Indices are free-running
16-bit counters; a slot is ``idx % size``.

One :class:`SplitQueue` belongs to exactly one worker thread; it is not thread-safe and needs
not be.  The ring areas are translated to host views once (and again when the memory table
changes, :meth:`SplitQueue.set_memory`), so the hot path is item access on memoryviews and one
precompiled struct.

Single stores.  ``struct.Struct.pack_into`` zero-fills its destination before it writes the
fields, so a 16-bit index written that way is briefly 0 to a reader on another CPU: a guest that
reads ``used->idx`` in that window sees the index jump backwards and declares the ring broken.
Every 16-bit ring field (indices, flags, event indices, avail entries) is therefore read and
written through a ``'H'``-format cast of the ring view: one native 2-byte load or store, which is
also cheaper than a ``struct`` call.  Native order is the ring's little-endian order on the hosts
we run on; the import refuses a big-endian host.  A used element is still written with ``struct``:
the guest does not look at it before the index that publishes it.

Memory ordering.  On x86 (TSO) stores are seen in program order and loads are not reordered
with other loads, so writing the used element before the used index, and reading the avail
index before the ring entries, need no barrier.  The one reordering TSO allows is a later load
passing an earlier store: "publish used idx, then read used_event" (and "publish avail_event,
then re-read avail idx") need a full barrier, or we can miss the guest's update and never
notify it (a hang).  Python has no fence primitive; acquiring and releasing an uncontended
lock executes a locked read-modify-write instruction, which is a full barrier on x86.
"""

from __future__ import annotations

import struct
import sys
import threading

from virtiofsd.errors import GuestProtocolError
from virtiofsd.virtio.chain import (
    DESCRIPTOR_SIZE,
    DescriptorChain,
    InvalidChainError,
    walk_chain,
)
from virtiofsd.virtio.memory import GuestMemory, GuestMemoryError

__all__ = ["MAX_QUEUE_SIZE", "SplitQueue", "ring_layout_sizes"]

MAX_QUEUE_SIZE = 32768

VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

if sys.byteorder != "little":
    raise ImportError("the split virtqueue accesses its little-endian rings in native order")

_USED_ELEMENT = struct.Struct("<II")
_pack_used_element = _USED_ELEMENT.pack_into

_RING_HEADER = 4  # flags u16, idx u16
# Positions of the 16-bit fields in the 'H' casts of the avail and used rings.
_FLAGS = 0
_IDX = 1
_AVAIL_RING = _RING_HEADER // 2


def ring_layout_sizes(size: int, event_idx: bool) -> tuple[int, int, int]:
    """Bytes of (descriptor table, available ring, used ring) for a queue of ``size``."""
    tail = 2 if event_idx else 0
    return (
        DESCRIPTOR_SIZE * size,
        _RING_HEADER + 2 * size + tail,
        _RING_HEADER + _USED_ELEMENT.size * size + tail,
    )


def check_queue_size(size: int) -> None:
    if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
        raise GuestProtocolError(
            f"queue size {size} is not a power of two between 1 and {MAX_QUEUE_SIZE}"
        )


class SplitQueue:
    """Pop available chains, push used elements and decide about notifications."""

    __slots__ = (
        "_avail",
        "_avail16",
        "_avail_event",
        "_avail_idx",
        "_desc",
        "_fence",
        "_last_avail",
        "_mask",
        "_signalled_used",
        "_signalled_valid",
        "_used",
        "_used16",
        "_used_event",
        "_used_idx",
        "avail_gpa",
        "desc_gpa",
        "event_idx",
        "indirect",
        "memory",
        "size",
        "used_gpa",
    )

    def __init__(
        self,
        size: int,
        desc_gpa: int,
        avail_gpa: int,
        used_gpa: int,
        mem: GuestMemory,
        *,
        event_idx: bool,
        indirect: bool = True,
        last_avail: int = 0,
    ) -> None:
        check_queue_size(size)
        for name, gpa, alignment in (
            ("descriptor table", desc_gpa, 16),
            ("available ring", avail_gpa, 2),
            ("used ring", used_gpa, 4),
        ):
            if gpa % alignment:
                raise GuestProtocolError(f"{name} at {gpa:#x} is not {alignment}-byte aligned")
        self.size = size
        self.desc_gpa = desc_gpa
        self.avail_gpa = avail_gpa
        self.used_gpa = used_gpa
        self.event_idx = event_idx
        self.indirect = indirect
        self._mask = size - 1
        # Indices into the 'H' casts: used_event follows the avail ring, avail_event the used one.
        self._used_event = (_RING_HEADER + 2 * size) // 2
        self._avail_event = (_RING_HEADER + _USED_ELEMENT.size * size) // 2
        self._fence = threading.Lock()
        self.set_memory(mem)
        self.last_avail = last_avail
        # The used index lives in guest memory; the device continues from there (the
        # vhost-user spec: GET/SET_VRING_BASE carry only the avail side for split rings).
        self._used_idx = self._used16[_IDX]
        self._signalled_used = self._used_idx
        self._signalled_valid = False

    # ---- state --------------------------------------------------------------------

    def set_memory(self, mem: GuestMemory) -> None:
        """(Re)translate the ring areas, e.g. after the memory table was replaced."""
        desc_len, avail_len, used_len = ring_layout_sizes(self.size, self.event_idx)
        try:
            desc = mem.translate(self.desc_gpa, desc_len)
            avail = mem.translate(self.avail_gpa, avail_len)
            used = mem.translate(self.used_gpa, used_len)
        except GuestMemoryError as err:
            raise GuestProtocolError(f"virtqueue rings are not in guest memory: {err}") from err
        self.memory = mem
        self._desc = desc
        self._avail = avail
        self._used = used
        self._avail16 = avail.cast("H")
        self._used16 = used.cast("H")

    @property
    def last_avail(self) -> int:
        """Free-running index of the next avail entry to process (GET/SET_VRING_BASE)."""
        return self._last_avail

    @last_avail.setter
    def last_avail(self, value: int) -> None:
        self._last_avail = value & 0xFFFF
        self._avail_idx = self._last_avail  # forces a fresh read of avail->idx

    @property
    def used_idx(self) -> int:
        return self._used_idx

    # ---- consuming --------------------------------------------------------------------

    def pop(self) -> DescriptorChain | None:
        """The next available chain, or ``None`` when the driver has published no more.

        Raises :class:`InvalidChainError` for a bad chain (the entry is consumed; complete its
        ``head``, if not ``None``, with length 0) and :class:`GuestProtocolError` if the
        available index itself is impossible (the ring is unusable until the guest fixes it).
        """
        last = self._last_avail
        if last == self._avail_idx:
            avail_idx = self._avail16[_IDX]
            pending = (avail_idx - last) & 0xFFFF
            if not pending:
                return None
            if pending > self.size:
                raise GuestProtocolError(
                    f"available index {avail_idx} is {pending} entries ahead of the next "
                    f"entry {last}, more than the queue size {self.size}"
                )
            self._avail_idx = avail_idx
        head = self._avail16[_AVAIL_RING + (last & self._mask)]
        self._last_avail = (last + 1) & 0xFFFF
        if head >= self.size:
            raise InvalidChainError(
                None, f"available entry {last} names descriptor {head}, queue size {self.size}"
            )
        return walk_chain(self.memory, self._desc, self.size, head, indirect_allowed=self.indirect)

    def known_available(self) -> int:
        """Chains published at the driver's last index we read that are not popped yet.

        No guest memory is read: this is what the last :meth:`pop` saw, a hint of how deep the
        queue is (more may have arrived since).
        """
        return (self._avail_idx - self._last_avail) & 0xFFFF

    def push_used(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes in its writable buffers.

        The element is written before the index that publishes it (see the module docstring).
        """
        if not 0 <= head < self.size:
            raise ValueError(f"descriptor head {head} outside a queue of {self.size}")
        if not 0 <= written <= 0xFFFFFFFF:
            raise ValueError(f"used length {written} does not fit in 32 bits")
        idx = self._used_idx
        _pack_used_element(self._used, _RING_HEADER + 8 * (idx & self._mask), head, written)
        idx = (idx + 1) & 0xFFFF
        self._used16[_IDX] = idx
        self._used_idx = idx

    # ---- notifications ----------------------------------------------------------------

    def needs_notification(self) -> bool:
        """Whether to signal the call eventfd for what was pushed since the last decision.

        With EVENT_IDX, the driver asks to be notified once the used index passes
        ``used_event``; otherwise it can only suppress all interrupts with NO_INTERRUPT.
        """
        new = self._used_idx
        old = self._signalled_used
        if new == old:
            return False
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        self._full_barrier()
        if self.event_idx:
            used_event = self._avail16[self._used_event]
            return not valid or ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self._avail16[_FLAGS] & VRING_AVAIL_F_NO_INTERRUPT

    def disable_notifications(self) -> None:
        """Ask the driver not to kick while we are draining anyway.

        With EVENT_IDX there is nothing to write: the driver kicks only when its avail index
        passes ``avail_event``, which we simply stop advancing until we re-enable.
        """
        if not self.event_idx:
            self._used16[_FLAGS] = VRING_USED_F_NO_NOTIFY

    def enable_notifications(self) -> bool:
        """Ask for kicks again; True if chains arrived meanwhile (drain again, no kick comes)."""
        if self.event_idx:
            self._used16[self._avail_event] = self._last_avail
        else:
            self._used16[_FLAGS] = 0
        self._full_barrier()
        return self._avail16[_IDX] != self._last_avail

    def _full_barrier(self) -> None:
        self._fence.acquire()
        self._fence.release()
