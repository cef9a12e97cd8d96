"""The split virtqueue on the compiled path (:mod:`virtiofsd.native`), same contract as
:class:`~virtiofsd.virtio.split_queue.SplitQueue`.

:class:`NativeSplitQueue` keeps the ring state (indices, event bookkeeping) in a C
``struct vfs_ring`` and walks chains in C (``split_ring.c``, which follows the rules of
:mod:`virtiofsd.virtio.chain` and is tested against it).  What a walk yields comes back as a
:class:`~virtiofsd.virtio.chain.DescriptorChain` whose views are slices of the same region
views the Python walker slices.  Unlike the Python walker, the C one
merges a buffer that continues the previous one in guest memory into it: a 1 MiB READ or
WRITE from a Linux guest, one descriptor per 4 KiB page, mostly comes out as a handful of
views instead of 257 (measured: 5 writable views per 1 MiB READ reply), which is what made big
requests slow in Python.

A request of up to :data:`COPY_CAPACITY` bytes (all but big WRITEs and SETXATTRs) comes out as
one copy rather than views, unless :attr:`NativeSplitQueue.may_copy` says no (the FUSE router
keeps WRITE data in guest memory): one buffer to decode from, and a snapshot the guest cannot
rewrite while the daemon decodes it.

:meth:`NativeSplitQueue.next_chain` is the worker's whole wait-drain-notify loop in C; the
Python worker calls it once per request (see :class:`virtiofsd.io.daemon.QueueWorker`).

Chain structs are reused: a walked struct goes back to its queue's free list as soon as its
chain is built, since nothing the chain holds points into it (the views are of guest memory,
and the copy of a small request is taken out as ``bytes``, which also means no later walk can
change a request a hook or a pool thread still reads).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any

from virtiofsd.errors import GuestProtocolError
from virtiofsd.native import ffi, lib
from virtiofsd.virtio.chain import DescriptorChain, InvalidChainError
from virtiofsd.virtio.memory import GuestMemory
from virtiofsd.virtio.split_queue import SplitQueue

__all__ = ["NATIVE_AVAILABLE", "NativeSplitQueue", "WOKEN", "WalkedChain", "split_queue_class"]

NATIVE_AVAILABLE = lib is not None

if NATIVE_AVAILABLE:
    _CHAIN = lib.VFS_CHAIN
    _EMPTY = lib.VFS_EMPTY
    _INVALID_CHAIN = lib.VFS_INVALID_CHAIN
    _RING_BROKEN = lib.VFS_RING_BROKEN
    _NO_HEAD = lib.VFS_NO_HEAD
    #: :meth:`NativeSplitQueue.next_chain`'s answer when the wake eventfd fired.
    WOKEN = lib.VFS_WOKEN
    _pop = lib.vfs_ring_pop
    _next = lib.vfs_ring_next
    _push_used = lib.vfs_ring_push_used
    _complete = lib.vfs_ring_complete
    _needs_notification = lib.vfs_ring_needs_notification
else:
    WOKEN = 3

#: Room for buffers per chain beyond the descriptors a chain can have (direct ones, then an
#: indirect table): a buffer that crosses from one memory region into the next splits in two.
_SPLIT_ALLOWANCE = 64
#: u64 words of the counters at the start of ``struct vfs_chain`` (head, readable, writable,
#: readable_bytes, writable_bytes, capacity, copied, copy_capacity).
_COUNTERS = 8
#: A request of up to this many bytes comes out as one copy instead of views of guest memory:
#: every request but a big WRITE or SETXATTR (one view to decode, and a snapshot the guest
#: cannot change while it is decoded).
COPY_CAPACITY = 16 * 1024
#: u64 words per ``struct vfs_buffer`` (host, offset, length | region << 32).
_BUFFER_WORDS = 3
_LOW_32 = 0xFFFFFFFF


def _host_address(view: memoryview) -> Any:
    """``uint8_t *`` to the first byte of ``view`` (writable guest memory).  No buffer export
    is held: whoever keeps ``view`` keeps the memory."""
    return ffi.cast("uint8_t *", ctypes.addressof(ctypes.c_char.from_buffer(view)))


class _ChainStruct:
    """One reusable ``struct vfs_chain`` with its buffer array and integer views of both."""

    __slots__ = ("buffers", "copy", "counters", "native", "queue", "request", "words")

    def __init__(self, capacity: int, queue: NativeSplitQueue) -> None:
        #: The queue whose walks this struct holds (for the views of guest memory).
        self.queue = queue
        self.buffers = ffi.new("struct vfs_buffer[]", capacity)
        self.copy = ffi.new("uint8_t[]", COPY_CAPACITY)
        self.native = ffi.new("struct vfs_chain *")
        self.native.capacity = capacity
        self.native.buffers = self.buffers
        self.native.copy_capacity = COPY_CAPACITY
        self.native.copy = self.copy
        self.counters = memoryview(ffi.buffer(self.native, 8 * _COUNTERS)).cast("Q")
        self.words = memoryview(ffi.buffer(self.buffers)).cast("Q")
        self.request = memoryview(ffi.buffer(self.copy))

    def error(self) -> str:
        return ffi.string(self.native.error).decode("utf-8", "replace")

    def writable(self) -> list[memoryview]:
        """The walked chain's writable buffers as views of guest memory, as the chain made
        by :meth:`NativeSplitQueue.chain_of` holds them."""
        counters = self.counters
        return self.views(counters[1], counters[2])

    def views(self, first: int, count: int) -> list[memoryview]:
        """Views of guest memory for ``count`` of the walked buffers from number ``first``
        (readable ones first, then writable ones)."""
        words = self.words
        regions = self.queue._views
        out = []
        start = _BUFFER_WORDS * first
        for position in range(start, start + _BUFFER_WORDS * count, _BUFFER_WORDS):
            offset = words[position + 1]
            packed = words[position + 2]
            out.append(regions[packed >> 32][offset:offset + (packed & _LOW_32)])
        return out


#: What :meth:`NativeSplitQueue.next_walk` hands out: a walk not yet made into a chain.
WalkedChain = _ChainStruct


class NativeSplitQueue(SplitQueue):
    """:class:`SplitQueue` with its state and its walk in C (module docstring)."""

    __slots__ = ("_capacity", "_free", "_keep", "_memory_table", "_ring", "_views", "may_copy")

    def __init__(self, size: int, desc_gpa: int, avail_gpa: int, used_gpa: int,
                 mem: GuestMemory, *, event_idx: bool, indirect: bool = True,
                 last_avail: int = 0) -> None:
        if not NATIVE_AVAILABLE:
            raise RuntimeError("the compiled virtqueue module (virtiofsd.native) is not built")
        self._ring = ffi.new("struct vfs_ring *")
        self._capacity = 2 * size + _SPLIT_ALLOWANCE
        #: ``may_copy(request) -> bool``: whether a small request (its whole readable bytes, as
        #: copied) may be handed over as that copy; None: always.  Else it comes as views.
        self.may_copy: Callable[[memoryview], bool] | None = None
        self._free: list[_ChainStruct] = []
        super().__init__(size, desc_gpa, avail_gpa, used_gpa, mem, event_idx=event_idx,
                         indirect=indirect, last_avail=last_avail)
        ring = self._ring
        ring.size = size
        ring.mask = size - 1
        ring.event_idx = event_idx
        ring.indirect = indirect
        ring.used_idx = self._used16[1]
        ring.signalled_used = ring.used_idx
        ring.signalled_valid = 0
        ring.call_fd = -1

    # ---- state --------------------------------------------------------------------

    def set_memory(self, mem: GuestMemory) -> None:
        super().set_memory(mem)
        regions = mem.regions
        table = ffi.new("struct vfs_region[]", max(1, len(regions)))
        keep: list[Any] = [table]
        for position, region in enumerate(regions):
            table[position].gpa = region.guest_phys_addr
            table[position].size = region.size
            table[position].host = _host_address(region.view)
        memory_table = ffi.new("struct vfs_memory *")
        memory_table.count = len(regions)
        memory_table.regions = table
        ring = self._ring
        ring.desc = _host_address(self._desc)
        ring.avail = ffi.cast("uint16_t *", _host_address(self._avail))
        ring.used = _host_address(self._used)
        # The views keep their mappings alive (the ring views are held by the base class); the
        # old table is dropped only once the ring points into the new one.
        keep.extend(region.view for region in regions)
        self._memory_table = memory_table
        self._views = [region.view for region in regions]
        self._keep = keep

    @property
    def last_avail(self) -> int:
        return self._ring.last_avail

    @last_avail.setter
    def last_avail(self, value: int) -> None:
        ring = self._ring
        ring.last_avail = value & 0xFFFF
        ring.avail_idx = ring.last_avail  # forces a fresh read of avail->idx

    @property
    def used_idx(self) -> int:
        return self._ring.used_idx

    # ---- consuming --------------------------------------------------------------------

    def _take(self) -> _ChainStruct:
        free = self._free
        return free.pop() if free else _ChainStruct(self._capacity, self)

    def chain_of(self, walked: WalkedChain) -> DescriptorChain:
        """The walked chain as a :class:`DescriptorChain` of views of guest memory (as
        :meth:`next_chain` returns it); ``walked`` goes back to the free list (nothing the chain
        holds points into it)."""
        counters = walked.counters
        copied = counters[6]
        request = walked.request[:copied] if copied else None
        if request is not None and (self.may_copy is None or self.may_copy(request)):
            readable = [bytes(request)]
        else:
            readable = walked.views(0, counters[1])
        chain = DescriptorChain(counters[0], readable, walked.writable(), counters[4],
                                counters[3])
        self._free.append(walked)
        return chain

    def _failed(self, status: int, walked: _ChainStruct) -> None:
        message = walked.error()
        head = walked.counters[0]
        self._free.append(walked)
        if status == _INVALID_CHAIN:
            raise InvalidChainError(None if head == _NO_HEAD else head, message)
        if status == _RING_BROKEN:
            raise GuestProtocolError(message)
        raise OSError(errno.EIO, message)

    def pop(self) -> DescriptorChain | None:
        walked = self._take()
        status = _pop(self._ring, self._memory_table, walked.native)
        if status == _CHAIN:
            return self.chain_of(walked)
        if status == _EMPTY:
            self._free.append(walked)
            return None
        self._failed(status, walked)
        return None

    def next_chain(self, kick_fd: int, wake_fd: int, notify: bool) -> DescriptorChain | int:
        """The next chain, waiting for a kick when there is none (GIL released).

        :param notify: this thread decides notifications (no thread pool): when the ring runs
            dry with completions the driver was not told about, the C loop signals the call
            eventfd given to :meth:`set_call_fd` before it sleeps.
        :returns: a chain, or :data:`WOKEN` (the wake eventfd fired, or :meth:`interrupt`).
        :raises InvalidChainError: as :meth:`pop`; :raises GuestProtocolError: the avail index
            is impossible; :raises OSError: poll failed on the eventfds.
        """
        walked = self.next_walk(kick_fd, wake_fd, notify)
        if type(walked) is int:
            return walked
        return self.chain_of(walked)

    def next_walk(self, kick_fd: int, wake_fd: int, notify: bool) -> WalkedChain | int:
        """:meth:`next_chain`, without turning the walk into a chain yet: the caller either
        answers a small request from :meth:`request_of` and completes it with
        :meth:`complete`, or makes the chain with :meth:`chain_of`.  One of the two must
        follow before the next walk."""
        free = self._free
        walked = free.pop() if free else _ChainStruct(self._capacity, self)
        status = _next(self._ring, self._memory_table, walked.native, kick_fd, wake_fd,
                       notify)
        if status == _CHAIN:
            return walked
        if status == WOKEN:
            free.append(walked)
            return status
        self._failed(status, walked)
        return status

    def request_of(self, walked: WalkedChain) -> tuple[memoryview, int,
                                                       Callable[[], list[memoryview]]] | None:
        """A walked chain's request, when the walk copied it whole, with the bytes its writable
        buffers hold and a function returning them as views (for a reply written in place);
        None when the request stayed in guest memory.  The request view is valid until
        :meth:`complete` or :meth:`chain_of`."""
        counters = walked.counters
        copied = counters[6]
        if not copied:
            return None
        return walked.request[:copied], counters[4], walked.writable

    def complete(self, walked: WalkedChain, header: bytes, body: Any, in_place: int = 0) -> int:
        """Complete a walked chain with ``header`` then ``body`` (bytes-like) written across its
        writable buffers, followed by ``in_place`` bytes the caller already wrote there through
        :meth:`WalkedChain.writable` views (a READ's data), and put it on the used ring.  The
        caller checked that they fit (if they do not, nothing is written and the chain
        completes with 0).

        :returns: the used length.
        """
        written = _complete(self._ring, walked.native, header, len(header),
                            body if type(body) is bytes else ffi.from_buffer(body), len(body),
                            in_place)
        self._free.append(walked)
        if written < 0:
            raise ValueError(f"descriptor head {walked.counters[0]} outside a queue of "
                             f"{self.size}")
        return written

    def set_call_fd(self, fd: int) -> None:
        """The call eventfd :meth:`next_chain` signals (-1: none).  Once this returns the old
        one is no longer written to, so the caller may close it."""
        lib.vfs_ring_set_call_fd(self._ring, fd)

    def interrupt(self) -> None:
        """From another thread: make :meth:`next_chain` return :data:`WOKEN` before it walks
        another chain (the caller also writes the wake eventfd, for a sleeping worker)."""
        self._ring.interrupted = 1

    def known_available(self) -> int:
        return lib.vfs_ring_known_available(self._ring)

    def push_used(self, head: int, written: int) -> None:
        try:
            if _push_used(self._ring, head, written) == 0:
                return
        except OverflowError:
            pass
        if not 0 <= head < self.size:
            raise ValueError(f"descriptor head {head} outside a queue of {self.size}")
        raise ValueError(f"used length {written} does not fit in 32 bits")

    # ---- notifications ----------------------------------------------------------------

    def needs_notification(self) -> bool:
        return bool(_needs_notification(self._ring))

    def disable_notifications(self) -> None:
        lib.vfs_ring_disable_notifications(self._ring)

    def enable_notifications(self) -> bool:
        return bool(lib.vfs_ring_enable_notifications(self._ring))


def split_queue_class() -> type[SplitQueue]:
    """The queue the daemon runs: the compiled one when it is built (and not turned off with
    ``VIRTIOFSD_PURE_PYTHON=1``), else the Python one."""
    return NativeSplitQueue if NATIVE_AVAILABLE else SplitQueue
