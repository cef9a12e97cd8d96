"""The driver (guest) side of one split virtqueue, living in :class:`GuestMemory`.

This is the half of virtio the daemon never implements: the guest kernel's.  It lays out the
three split-ring areas (virtio 1.x, 2.7), hands out descriptors, publishes chains in the
available ring, notifies the device through the kick eventfd and collects completions from the
used ring after the device signals the call eventfd.

Layout (all little endian, VERSION_1 so the areas are independent):

* descriptor table: ``size`` x ``{le64 addr; le32 len; le16 flags; le16 next}``, 16-aligned;
* available ring:   ``le16 flags; le16 idx; le16 ring[size]; le16 used_event``, 2-aligned;
* used ring:        ``le16 flags; le16 idx; {le32 id; le32 len} ring[size]; le16 avail_event``,
  4-aligned.

``idx`` fields are free-running 16-bit counters; ring slots are ``idx % size``.

Notification suppression: without VIRTIO_F_EVENT_IDX the device may set
``VRING_USED_F_NO_NOTIFY`` to ask us not to kick, and we never set ``VRING_AVAIL_F_NO_INTERRUPT``
(a test wants every completion signalled).  With EVENT_IDX those flags are ignored: we kick only
when the device's ``avail_event`` lies in the range of entries just published, and we keep
``used_event`` equal to the next used index we will read so the device signals the next
completion.  A front-end that got this wrong would hang a real back-end, which is exactly what
the tests must notice, so every wait here has a deadline.

Ordering: CPython stores into the shared mapping in program order and x86-64 does not reorder
stores with stores or loads with loads, so "write descriptors, then the ring slot, then idx" is
seen in that order by the daemon.  That is the guarantee the guest kernel gets from its
``virtio_wmb``; on weaker architectures this module would need explicit fences.

The robustness helpers (:meth:`DriverQueue.write_descriptor`, :meth:`DriverQueue.publish_head`,
:meth:`DriverQueue.set_avail_idx`) bypass all bookkeeping on purpose, so a test can present
loops, out-of-range indices, lying lengths and addresses outside guest memory.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import time
from collections.abc import Sequence

from virtiofsd.testing.guest_memory import GuestMemory

__all__ = [
    "DESCRIPTOR",
    "DriverQueue",
    "VRING_DESC_F_INDIRECT",
    "VRING_DESC_F_NEXT",
    "VRING_DESC_F_WRITE",
    "VRING_USED_F_NO_NOTIFY",
    "need_event",
]

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_USED_F_NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768

DESCRIPTOR = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_ONE = _U64.pack(1)

# Offsets inside the available and used rings.
_IDX = 2
_RING = 4
# The same positions in the 'H' casts of the rings.
_IDX16 = _IDX // 2
_RING16 = _RING // 2

if sys.byteorder != "little":
    raise ImportError("the driver ring writes its little-endian ring fields in native order")


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Virtio's ``vring_need_event``: did ``[old_idx, new_idx)`` just pass ``event_idx``?"""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF


class DriverQueue:
    """One split virtqueue, driver side, plus its kick and call eventfds.

    The queue owns both eventfds; the front-end passes them to the daemon and the queue closes
    them in :meth:`close`.  ``event_idx`` must match what was negotiated in SET_FEATURES.
    ``base`` is the starting value of both ring indices, the value SET_VRING_BASE must carry;
    a base near 65535 makes the 16-bit wrap-around happen within a few requests.
    """

    def __init__(
        self, memory: GuestMemory, size: int, *, event_idx: bool = False, base: int = 0
    ) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise ValueError(f"split queue size must be a power of two <= 32768, got {size}")
        self.size = size
        self.event_idx = event_idx
        self.memory = memory
        self.desc_gpa = memory.alloc(16 * size, align=16)
        self.avail_gpa = memory.alloc(6 + 2 * size, align=2)
        self.used_gpa = memory.alloc(6 + 8 * size, align=4)
        self._desc = memory.view(self.desc_gpa, 16 * size)
        self._avail = memory.view(self.avail_gpa, 6 + 2 * size)
        self._used = memory.view(self.used_gpa, 6 + 8 * size)
        # 16-bit ring fields go through 'H' casts: one 2-byte load or store each.
        # struct.pack_into would zero-fill first, so the device could read an index of 0.
        self._avail16 = self._avail.cast("H")
        self._used16 = self._used.cast("H")
        self._used_event = (_RING + 2 * size) // 2
        self._avail_event = (_RING + 8 * size) // 2
        self._free: list[int] = list(range(size - 1, -1, -1))
        self._chains: dict[int, tuple[int, ...]] = {}
        base &= 0xFFFF
        self._avail_idx = base
        self._kicked_avail_idx = base
        self._last_used_idx = base
        self._avail16[_IDX16] = base
        self._used16[_IDX16] = base
        if event_idx:
            self._avail16[self._used_event] = base
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poller = select.poll()
        self._poller.register(self.call_fd, select.POLLIN)

    # -- normal operation ---------------------------------------------------------------------

    @property
    def free_descriptors(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return len(self._chains)

    @property
    def avail_idx(self) -> int:
        """Our shadow of the published available index (free-running, 16 bits)."""
        return self._avail_idx

    def add_chain(
        self, readable: Sequence[tuple[int, int]], writable: Sequence[tuple[int, int]] = ()
    ) -> int:
        """Publish a chain of device-readable then device-writable ``(gpa, length)`` buffers.

        Returns the head descriptor index, which is what comes back in the used ring.  The
        device does not see the chain until :meth:`kick` (unless it is polling).
        """
        count = len(readable) + len(writable)
        if count == 0:
            raise ValueError("a descriptor chain needs at least one buffer")
        free = self._free
        if count > len(free):
            raise OSError(errno.ENOSPC, f"queue full: need {count} descriptors, {len(free)} free")
        indices = tuple(free.pop() for _ in range(count))
        pack_into = DESCRIPTOR.pack_into
        desc = self._desc
        last = count - 1
        position = 0
        for buffers, write_flag in ((readable, 0), (writable, VRING_DESC_F_WRITE)):
            for gpa, length in buffers:
                if position < last:
                    flags, next_index = write_flag | VRING_DESC_F_NEXT, indices[position + 1]
                else:
                    flags, next_index = write_flag, 0
                pack_into(desc, 16 * indices[position], gpa, length, flags, next_index)
                position += 1
        head = indices[0]
        self._chains[head] = indices
        self._publish(head)
        return head

    def kick(self, *, force: bool = False) -> bool:
        """Notify the device of newly published chains unless it asked not to be; True if sent."""
        new_idx = self._avail_idx
        old_idx = self._kicked_avail_idx
        self._kicked_avail_idx = new_idx
        if not force:
            if new_idx == old_idx:
                return False
            if self.event_idx:
                avail_event = self._used16[self._avail_event]
                if not need_event(avail_event, new_idx, old_idx):
                    return False
            elif self._used16[0] & VRING_USED_F_NO_NOTIFY:
                return False
        os.write(self.kick_fd, _ONE)
        return True

    def pop_used(self) -> list[tuple[int, int]]:
        """Every ``(head, written_length)`` the device completed since the last call.

        Descriptors of chains we submitted with :meth:`add_chain` return to the free list.
        Heads we never published (a buggy device) are returned as they are, for the caller to
        flag; an index larger than the queue size is reported too, never used to index.
        """
        used = self._used
        used_idx = self._used16[_IDX16]
        last = self._last_used_idx
        if used_idx == last:
            return []
        pending = (used_idx - last) & 0xFFFF
        if pending > self.size:
            raise OSError(
                errno.EPROTO,
                f"device advanced used idx by {pending} on a queue of {self.size} entries",
            )
        completed = []
        unpack_from = _USED_ELEM.unpack_from
        mask = self.size - 1
        chains = self._chains
        free = self._free
        for _ in range(pending):
            head, length = unpack_from(used, _RING + 8 * (last & mask))
            last = (last + 1) & 0xFFFF
            indices = chains.pop(head, None)
            if indices is not None:
                free.extend(indices)
            completed.append((head, length))
        self._last_used_idx = last
        if self.event_idx:
            self._avail16[self._used_event] = last
        return completed

    def wait_used(self, timeout: float) -> list[tuple[int, int]]:
        """Like :meth:`pop_used`, but block (polling the call eventfd) until something completes.

        Raises TimeoutError after ``timeout`` seconds without a completion: a daemon that
        never answers must fail the test, not hang it.
        """
        completed = self.pop_used()
        if completed:
            return completed
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"no used-ring entry within {timeout:g}s "
                    f"(used idx {self._last_used_idx}, avail idx {self._avail_idx})",
                )
            if self._poller.poll(max(1, int(remaining * 1000))):
                self._drain_call_fd()
            completed = self.pop_used()
            if completed:
                return completed

    def _drain_call_fd(self) -> None:
        try:
            os.read(self.call_fd, 8)
        except BlockingIOError:
            pass

    def _publish(self, head: int) -> None:
        avail16 = self._avail16
        idx = self._avail_idx
        avail16[_RING16 + (idx & (self.size - 1))] = head
        idx = (idx + 1) & 0xFFFF
        avail16[_IDX16] = idx
        self._avail_idx = idx

    # -- deliberate misuse, for robustness tests ----------------------------------------------

    def take_descriptors(self, count: int) -> list[int]:
        """Remove ``count`` descriptor indices from the free list for hand-built chains."""
        if count > len(self._free):
            raise OSError(errno.ENOSPC, f"only {len(self._free)} descriptors free")
        return [self._free.pop() for _ in range(count)]

    def return_descriptors(self, indices: Sequence[int]) -> None:
        """Give indices from :meth:`take_descriptors` back once the device is done with them."""
        self._free.extend(indices)

    def write_descriptor(
        self, index: int, addr: int, length: int, flags: int, next_index: int
    ) -> None:
        """Write one raw descriptor; nothing is checked except that ``index`` is in the table."""
        DESCRIPTOR.pack_into(self._desc, 16 * index, addr, length, flags, next_index)

    def publish_head(self, head: int) -> None:
        """Put any 16-bit value in the next available slot and advance avail idx."""
        self._publish(head)

    def set_avail_idx(self, value: int) -> None:
        """Overwrite the published available index, e.g. to claim more entries than exist."""
        value &= 0xFFFF
        self._avail16[_IDX16] = value
        self._avail_idx = value

    def read_used_idx(self) -> int:
        return self._used16[_IDX16]

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close both eventfds and drop the views into guest memory; idempotent."""
        if self.kick_fd < 0:
            return
        self._poller.unregister(self.call_fd)
        os.close(self.kick_fd)
        os.close(self.call_fd)
        self.kick_fd = self.call_fd = -1
        for view in (self._avail16, self._used16, self._desc, self._avail, self._used):
            view.release()
