"""A FUSE client speaking to a virtio-fs daemon through :class:`VhostUserFrontend`.

It plays the guest kernel's ``fs/fuse/virtio_fs.c``: every request is one descriptor chain on
the request queue (FORGET and BATCH_FORGET go to the hiprio queue, as Linux sends them), laid
out like Linux lays it out: the in-header, then each request argument as its own
device-readable descriptor, then the out-header and the reply area as device-writable
descriptors.  ``split_descriptors=False`` sends one readable and one writable buffer instead,
which a daemon must accept just as well.

Three levels of API:

* convenience methods (``lookup``, ``create``, ``read``, ...) that encode arguments, parse
  replies into named tuples and raise :class:`FuseReplyError` for an error reply;
* :meth:`FuseClient.request` (and :meth:`FuseClient.submit` / :meth:`FuseClient.wait` for
  several requests in flight): opcode, nodeid and raw argument bytes in, ``(error, payload)``
  out, with no interpretation beyond checking the out-header;
* :meth:`FuseClient.submit_descriptors`: arbitrary descriptors (lying lengths, addresses
  outside guest memory, loops) for robustness tests.

Buffers are allocated once per in-flight slot and reused, and every layout is a precompiled
struct from :mod:`virtiofsd.fuse.abi`, so the request path allocates little beyond the reply
bytes it returns (the benchmark builds on this).

A reply that breaks the FUSE protocol (wrong unique, impossible lengths, a completion for a
chain that was never submitted) raises :class:`BackendProtocolError`: those are daemon bugs
the tests must see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import InitFlag, Opcode
from virtiofsd.testing.driver_ring import VRING_DESC_F_NEXT
from virtiofsd.testing.frontend import (
    HIPRIO_QUEUE,
    REQUEST_QUEUE,
    BackendProtocolError,
    VhostUserFrontend,
)

__all__ = [
    "Attr",
    "AttrOut",
    "Dirent",
    "DirentPlus",
    "EntryOut",
    "FuseClient",
    "FuseReplyError",
    "InitOut",
    "LINUX_6_1_INIT_FLAGS",
    "LockOut",
    "OpenOut",
    "RawDescriptor",
    "RawTicket",
    "RequestTicket",
    "StatfsOut",
    "parse_dirents",
    "parse_entry",
    "parse_direntplus",
]

#: What ``fuse_send_init`` in Linux 6.1 offers on a virtio-fs mount (auto_submounts on, no DAX,
#: no security labels).
LINUX_6_1_INIT_FLAGS = (
    InitFlag.ASYNC_READ
    | InitFlag.POSIX_LOCKS
    | InitFlag.ATOMIC_O_TRUNC
    | InitFlag.EXPORT_SUPPORT
    | InitFlag.BIG_WRITES
    | InitFlag.DONT_MASK
    | InitFlag.SPLICE_WRITE
    | InitFlag.SPLICE_MOVE
    | InitFlag.SPLICE_READ
    | InitFlag.FLOCK_LOCKS
    | InitFlag.HAS_IOCTL_DIR
    | InitFlag.AUTO_INVAL_DATA
    | InitFlag.DO_READDIRPLUS
    | InitFlag.READDIRPLUS_AUTO
    | InitFlag.ASYNC_DIO
    | InitFlag.WRITEBACK_CACHE
    | InitFlag.NO_OPEN_SUPPORT
    | InitFlag.PARALLEL_DIROPS
    | InitFlag.HANDLE_KILLPRIV
    | InitFlag.POSIX_ACL
    | InitFlag.ABORT_ERROR
    | InitFlag.MAX_PAGES
    | InitFlag.CACHE_SYMLINKS
    | InitFlag.NO_OPENDIR_SUPPORT
    | InitFlag.EXPLICIT_INVAL_DATA
    | InitFlag.HANDLE_KILLPRIV_V2
    | InitFlag.SETXATTR_EXT
    | InitFlag.INIT_EXT
    | InitFlag.SUBMOUNTS
)

#: Linux's default readahead window (VM_READAHEAD_PAGES), what it puts in init_in.
DEFAULT_MAX_READAHEAD = 128 * 1024

_OUT_HEADER_SIZE = abi.OUT_HEADER.size
_IN_HEADER_SIZE = abi.IN_HEADER.size
_DEFAULT_REPLY_CAPACITY = 4096
_MAX_ERRNO = 4095


# -- errors and parsed replies ----------------------------------------------------------------


#: The kernel's OFFSET_MAX: a lock ending there runs to the end of the file.
OFFSET_MAX = (1 << 63) - 1


class FuseReplyError(OSError):
    """The daemon answered a request with ``-errno``; ``opcode`` says which request."""

    def __init__(self, error: int, opcode: int) -> None:
        super().__init__(error, f"{os.strerror(error)} (FUSE {_opname(opcode)})")
        self.opcode = opcode


class Attr(NamedTuple):
    """``fuse_attr``."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


class EntryOut(NamedTuple):
    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


class AttrOut(NamedTuple):
    attr_valid: int
    attr_valid_nsec: int
    attr: Attr


class OpenOut(NamedTuple):
    fh: int
    open_flags: int


class InitOut(NamedTuple):
    """``fuse_init_out``; ``flags`` already merges ``flags2`` in when INIT_EXT is set."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int


class LockOut(NamedTuple):
    """``fuse_lk_out``: the conflicting lock GETLK found (type F_UNLCK: none)."""

    start: int
    end: int
    lock_type: int
    pid: int


class StatfsOut(NamedTuple):
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


class Dirent(NamedTuple):
    ino: int
    off: int
    type: int
    name: bytes


class DirentPlus(NamedTuple):
    entry: EntryOut
    dirent: Dirent


def _unpack(layout, payload: bytes, opcode: int, offset: int = 0) -> tuple:  # type: ignore[no-untyped-def]
    if len(payload) < offset + layout.size:
        raise BackendProtocolError(
            f"FUSE {Opcode(opcode).name} reply has {len(payload)} bytes, "
            f"needs {offset + layout.size}"
        )
    return layout.unpack_from(payload, offset)


def parse_entry(payload: bytes, opcode: int = Opcode.LOOKUP, offset: int = 0) -> EntryOut:
    """A ``fuse_entry_out`` at ``offset`` of a reply payload."""
    values = _unpack(abi.ENTRY_OUT, payload, opcode, offset)
    return EntryOut(*values[:6], Attr._make(values[6:]))


def parse_dirents(payload: bytes) -> list[Dirent]:
    """Split a READDIR reply into records; a record that overruns the reply is a daemon bug."""
    entries = []
    offset = 0
    while offset < len(payload):
        ino, off, namelen, dtype = _unpack(abi.DIRENT, payload, Opcode.READDIR, offset)
        size = abi.dirent_size(namelen)
        if offset + size > len(payload):
            raise BackendProtocolError(
                f"READDIR record at {offset} ({size} bytes) overruns the {len(payload)}-byte reply"
            )
        start = offset + abi.DIRENT.size
        entries.append(Dirent(ino, off, dtype, bytes(payload[start : start + namelen])))
        offset += size
    return entries


def parse_direntplus(payload: bytes) -> list[DirentPlus]:
    """Split a READDIRPLUS reply into (entry_out, dirent) records."""
    entries = []
    offset = 0
    while offset < len(payload):
        entry = parse_entry(payload, Opcode.READDIRPLUS, offset)
        dirent_at = offset + abi.ENTRY_OUT.size
        ino, off, namelen, dtype = _unpack(abi.DIRENT, payload, Opcode.READDIRPLUS, dirent_at)
        size = abi.direntplus_size(namelen)
        if offset + size > len(payload):
            raise BackendProtocolError(
                f"READDIRPLUS record at {offset} ({size} bytes) overruns "
                f"the {len(payload)}-byte reply"
            )
        start = dirent_at + abi.DIRENT.size
        entries.append(
            DirentPlus(entry, Dirent(ino, off, dtype, bytes(payload[start : start + namelen])))
        )
        offset += size
    return entries


def _name(name: str | bytes) -> bytes:
    """A path component as FUSE sends it: bytes with a terminating NUL."""
    return os.fsencode(name) + b"\0"


# -- in-flight bookkeeping --------------------------------------------------------------------


class RequestTicket:
    """A request in flight, and the preallocated guest buffers it uses.

    :meth:`FuseClient.submit` returns one; :meth:`FuseClient.wait` collects it once, after
    which its buffers serve a later request.
    """

    __slots__ = (
        "in_gpa",
        "in_view",
        "out_gpa",
        "out_view",
        "opcode",
        "unique",
        "queue",
        "reply_capacity",
        "used_len",
        "done",
    )

    def __init__(
        self, in_gpa: int, in_view: memoryview, out_gpa: int, out_view: memoryview
    ) -> None:
        self.in_gpa = in_gpa
        self.in_view = in_view
        self.out_gpa = out_gpa
        self.out_view = out_view
        self.opcode = 0
        self.unique = 0
        self.queue = REQUEST_QUEUE
        self.reply_capacity: int | None = None
        self.used_len = 0
        self.done = False


@dataclasses.dataclass(frozen=True)
class RawDescriptor:
    """One hand-made descriptor for :meth:`FuseClient.submit_descriptors`.

    ``next`` is a position in the submitted list (NEXT is set for you when it is not None), so
    ``next=0`` on the last descriptor makes a loop.  ``next_index`` instead gives the absolute
    descriptor-table index, which may point anywhere, including outside the table.
    """

    addr: int
    length: int
    flags: int = 0
    next: int | None = None
    next_index: int | None = None


@dataclasses.dataclass(eq=False)
class RawTicket:
    """A chain submitted with :meth:`FuseClient.submit_descriptors`."""

    queue: int
    head: int
    indices: tuple[int, ...]
    used_len: int = 0
    done: bool = False


# -- the client -------------------------------------------------------------------------------


class FuseClient:
    """FUSE requests over a started :class:`VhostUserFrontend` (queues 0 and 1 set up).

    ``uid``/``gid``/``pid`` go into every in-header unless a call overrides them; change them
    for a block of calls with :meth:`acting_as`.  ``timeout`` bounds every wait for a reply.
    Closing the client closes the front-end (disconnecting from the daemon).
    """

    def __init__(
        self,
        frontend: VhostUserFrontend,
        *,
        uid: int = 0,
        gid: int = 0,
        pid: int | None = None,
        timeout: float | None = None,
        split_descriptors: bool = True,
        max_request_size: int = abi.MAX_REQUEST_SIZE,
        max_reply_size: int = abi.MAX_WRITE + _OUT_HEADER_SIZE,
    ) -> None:
        if len(frontend.queues) <= REQUEST_QUEUE or frontend.memory is None:
            raise RuntimeError("start the front-end (memory and queues 0 and 1) before the client")
        self.frontend = frontend
        self.uid = uid
        self.gid = gid
        self.pid = os.getpid() if pid is None else pid
        self.timeout = frontend.timeout if timeout is None else timeout
        self.split_descriptors = split_descriptors
        self.max_request_size = max_request_size
        self.max_reply_size = max_reply_size
        self.init_out: InitOut | None = None
        self._queues = frontend.queues
        self._free_slots: list[RequestTicket] = []
        self._all_slots: list[RequestTicket] = []
        self._pending: dict[tuple[int, int], RequestTicket | RawTicket] = {}
        self._unique = 0
        self._setxattr_ext = False

    # -- raw request path ---------------------------------------------------------------------

    def submit(
        self,
        opcode: int,
        nodeid: int = 0,
        body: bytes | Sequence[bytes] = b"",
        reply_capacity: int | None = _DEFAULT_REPLY_CAPACITY,
        *,
        queue: int = REQUEST_QUEUE,
        uid: int | None = None,
        gid: int | None = None,
        pid: int | None = None,
        extensions: bytes = b"",
        length: int | None = None,
        kick: bool = True,
    ) -> RequestTicket:
        """Put one request on ``queue`` and return its ticket for :meth:`wait`.

        ``body`` is the argument bytes, or a sequence of arguments (each one its own descriptor
        when ``split_descriptors``).  ``reply_capacity`` is the room for the reply after the
        out-header; None sends no device-writable buffer at all (FORGET).  ``extensions`` are
        appended after the arguments and counted in ``total_extlen``; ``length`` overrides the
        in-header ``len`` field, to lie about the request size.
        """
        args = (body,) if isinstance(body, (bytes, bytearray, memoryview)) else tuple(body)
        slot = self._free_slots.pop() if self._free_slots else self._new_slot()
        try:
            self._unique += 2
            unique = self._unique
            view = slot.in_view
            offset = _IN_HEADER_SIZE
            readable = [(slot.in_gpa, _IN_HEADER_SIZE)]
            if self.split_descriptors:
                for arg in args:
                    if arg:
                        end = offset + len(arg)
                        view[offset:end] = arg
                        readable.append((slot.in_gpa + offset, len(arg)))
                        offset = end
                if extensions:
                    view[offset : offset + len(extensions)] = extensions
                    readable.append((slot.in_gpa + offset, len(extensions)))
                    offset += len(extensions)
            else:
                for arg in (*args, extensions):
                    end = offset + len(arg)
                    view[offset:end] = arg
                    offset = end
                readable[0] = (slot.in_gpa, offset)
            abi.IN_HEADER.pack_into(
                view,
                0,
                offset if length is None else length,
                opcode,
                unique,
                nodeid,
                self.uid if uid is None else uid,
                self.gid if gid is None else gid,
                self.pid if pid is None else pid,
                len(extensions) // 8,
                0,
            )
            if reply_capacity is None:
                writable: list[tuple[int, int]] = []
            else:
                if _OUT_HEADER_SIZE + reply_capacity > self.max_reply_size:
                    raise ValueError(f"reply capacity {reply_capacity} exceeds the slot's buffer")
                abi.OUT_HEADER.pack_into(slot.out_view, 0, 0, 0, 0)
                if not self.split_descriptors:
                    writable = [(slot.out_gpa, _OUT_HEADER_SIZE + reply_capacity)]
                elif reply_capacity:
                    writable = [
                        (slot.out_gpa, _OUT_HEADER_SIZE),
                        (slot.out_gpa + _OUT_HEADER_SIZE, reply_capacity),
                    ]
                else:
                    writable = [(slot.out_gpa, _OUT_HEADER_SIZE)]
            driver_queue = self._queues[queue]
            head = driver_queue.add_chain(readable, writable)
        except BaseException:
            self._free_slots.append(slot)
            raise
        slot.opcode = opcode
        slot.unique = unique
        slot.queue = queue
        slot.reply_capacity = reply_capacity
        slot.done = False
        self._pending[(queue, head)] = slot
        if kick:
            driver_queue.kick()
        return slot

    def wait(self, ticket: RequestTicket, *, allow_no_reply: bool = False) -> tuple[int, bytes]:
        """Wait for ``ticket`` and return ``(positive errno or 0, reply payload)``.

        A completion with nothing written is a protocol error unless no reply was asked for or
        ``allow_no_reply`` (DESTROY and INTERRUPT, which daemons may leave unanswered).
        """
        if not ticket.unique:
            raise RuntimeError("this request was already collected")
        try:
            self._wait_done(ticket)
            return self._parse_reply(ticket, allow_no_reply)
        finally:
            if ticket.done:
                ticket.unique = 0
                self._free_slots.append(ticket)

    def request(
        self,
        opcode: int,
        nodeid: int = 0,
        body: bytes | Sequence[bytes] = b"",
        reply_capacity: int | None = _DEFAULT_REPLY_CAPACITY,
        *,
        allow_no_reply: bool = False,
        **submit_options: int | bytes | None,
    ) -> tuple[int, bytes]:
        """Send one request and wait for it: ``(errno, payload)``; errno is 0 on success."""
        ticket = self.submit(opcode, nodeid, body, reply_capacity, **submit_options)  # type: ignore[arg-type]
        return self.wait(ticket, allow_no_reply=allow_no_reply)

    def call(
        self,
        opcode: int,
        nodeid: int = 0,
        body: bytes | Sequence[bytes] = b"",
        reply_capacity: int | None = _DEFAULT_REPLY_CAPACITY,
        *,
        allow_no_reply: bool = False,
        queue: int = REQUEST_QUEUE,
    ) -> bytes:
        """:meth:`request`, raising :class:`FuseReplyError` for an error reply."""
        error, payload = self.request(
            opcode, nodeid, body, reply_capacity, allow_no_reply=allow_no_reply, queue=queue
        )
        if error:
            raise FuseReplyError(error, opcode)
        return payload

    @contextlib.contextmanager
    def acting_as(self, uid: int, gid: int, pid: int | None = None) -> Iterator[FuseClient]:
        """Send the requests of a ``with`` block as another guest user."""
        saved = self.uid, self.gid, self.pid
        self.uid, self.gid = uid, gid
        if pid is not None:
            self.pid = pid
        try:
            yield self
        finally:
            self.uid, self.gid, self.pid = saved

    def _new_slot(self) -> RequestTicket:
        memory = self.frontend.memory
        assert memory is not None
        in_gpa = memory.alloc(self.max_request_size, align=4096)
        out_gpa = memory.alloc(self.max_reply_size, align=4096)
        slot = RequestTicket(
            in_gpa,
            memory.view(in_gpa, self.max_request_size),
            out_gpa,
            memory.view(out_gpa, self.max_reply_size),
        )
        self._all_slots.append(slot)
        return slot

    def _wait_done(self, ticket: RequestTicket | RawTicket, timeout: float | None = None) -> None:
        """Collect completions on the ticket's queue until the ticket itself is done.

        Completions of other requests are recorded on their tickets along the way, which is
        what lets callers wait for in-flight requests in any order.
        """
        if ticket.done:
            return
        queue_index = ticket.queue
        driver_queue = self._queues[queue_index]
        pending = self._pending
        wait_for = self.timeout if timeout is None else timeout
        while not ticket.done:
            unknown = []
            for head, used_len in driver_queue.wait_used(wait_for):
                done = pending.pop((queue_index, head), None)
                if done is None:
                    unknown.append(head)
                    continue
                done.used_len = used_len
                done.done = True
                if isinstance(done, RawTicket):
                    driver_queue.return_descriptors(done.indices)
            if unknown:
                raise BackendProtocolError(
                    f"queue {queue_index}: daemon completed heads {unknown}, not in flight"
                )

    def _parse_reply(self, slot: RequestTicket, allow_no_reply: bool) -> tuple[int, bytes]:
        used_len = slot.used_len
        capacity = slot.reply_capacity
        if capacity is None or (used_len == 0 and allow_no_reply):
            if used_len:
                raise BackendProtocolError(
                    f"FUSE {_opname(slot.opcode)}: {used_len} bytes written without a reply buffer"
                )
            return 0, b""
        if used_len < _OUT_HEADER_SIZE or used_len > _OUT_HEADER_SIZE + capacity:
            raise BackendProtocolError(
                f"FUSE {_opname(slot.opcode)}: used length {used_len} for a reply area of "
                f"{_OUT_HEADER_SIZE}+{capacity} bytes"
            )
        out_len, error, unique = abi.OUT_HEADER.unpack_from(slot.out_view, 0)
        if unique != slot.unique:
            raise BackendProtocolError(
                f"FUSE {_opname(slot.opcode)}: reply unique {unique}, request was {slot.unique}"
            )
        if out_len != used_len or not -_MAX_ERRNO <= error <= 0:
            raise BackendProtocolError(
                f"FUSE {_opname(slot.opcode)}: out header len {out_len} error {error}, "
                f"used length {used_len}"
            )
        if error:
            if out_len != _OUT_HEADER_SIZE:
                raise BackendProtocolError(
                    f"FUSE {_opname(slot.opcode)}: error reply carries {out_len - 16} payload bytes"
                )
            return -error, b""
        return 0, bytes(slot.out_view[_OUT_HEADER_SIZE:out_len])

    # -- hand-made descriptor chains ----------------------------------------------------------

    def alloc_buffer(self, size: int) -> tuple[int, memoryview]:
        """A fresh guest buffer for hand-made chains: ``(gpa, writable view)``."""
        memory = self.frontend.memory
        assert memory is not None
        gpa = memory.alloc(size)
        return gpa, memory.view(gpa, size)

    def encode_in_header(
        self, opcode: int, nodeid: int, body_length: int, *, length: int | None = None
    ) -> bytes:
        """An in-header for a hand-made request with a fresh unique and the client's creds."""
        self._unique += 2
        total = _IN_HEADER_SIZE + body_length if length is None else length
        return abi.IN_HEADER.pack(
            total, opcode, self._unique, nodeid, self.uid, self.gid, self.pid, 0, 0
        )

    def submit_descriptors(
        self,
        descriptors: Sequence[RawDescriptor],
        *,
        queue: int = REQUEST_QUEUE,
        head: int | None = None,
        kick: bool = True,
    ) -> RawTicket:
        """Write ``descriptors`` into free table slots and publish the first (or ``head``).

        Nothing is validated: the point is to hand the daemon what a hostile guest would.
        Wait for the outcome with :meth:`wait_raw`.
        """
        driver_queue = self._queues[queue]
        indices = tuple(driver_queue.take_descriptors(len(descriptors)))
        for position, descriptor in enumerate(descriptors):
            flags, next_index = descriptor.flags, 0
            if descriptor.next_index is not None:
                next_index = descriptor.next_index
            elif descriptor.next is not None:
                flags |= VRING_DESC_F_NEXT
                next_index = indices[descriptor.next]
            driver_queue.write_descriptor(
                indices[position], descriptor.addr, descriptor.length, flags, next_index
            )
        published = indices[0] if head is None else head
        ticket = RawTicket(queue, published, indices)
        self._pending[(queue, published & 0xFFFF)] = ticket
        driver_queue.publish_head(published)
        if kick:
            driver_queue.kick(force=True)
        return ticket

    def wait_raw(self, ticket: RawTicket, timeout: float | None = None) -> int:
        """Wait for a hand-made chain to come back; return the used length the daemon wrote."""
        self._wait_done(ticket, timeout)
        return ticket.used_len

    # -- session ------------------------------------------------------------------------------

    def init(
        self,
        flags: int = LINUX_6_1_INIT_FLAGS,
        *,
        major: int = abi.KERNEL_VERSION,
        minor: int = abi.KERNEL_MINOR_VERSION,
        max_readahead: int = DEFAULT_MAX_READAHEAD,
    ) -> InitOut:
        """FUSE_INIT as a Linux 6.1 guest sends it; remembers and returns the reply."""
        body = abi.INIT_IN.pack(major, minor, max_readahead, flags & 0xFFFF_FFFF, flags >> 32)
        payload = self.call(Opcode.INIT, 0, body, abi.INIT_OUT.size)
        if len(payload) < abi.INIT_OUT.size:
            payload += bytes(abi.INIT_OUT.size - len(payload))
        (
            out_major,
            out_minor,
            readahead,
            flags_lo,
            max_background,
            congestion,
            max_write,
            time_gran,
            max_pages,
            map_alignment,
            flags_hi,
        ) = abi.INIT_OUT.unpack(payload)
        merged = flags_lo | (flags_hi << 32 if flags_lo & InitFlag.INIT_EXT else 0)
        init_out = InitOut(
            out_major,
            out_minor,
            readahead,
            merged,
            max_background,
            congestion,
            max_write,
            time_gran,
            max_pages,
            map_alignment,
        )
        self.init_out = init_out
        self._setxattr_ext = bool(merged & flags & InitFlag.SETXATTR_EXT)
        return init_out

    def destroy(self) -> None:
        """FUSE_DESTROY; the Rust daemon completes it without writing a reply, C replies OK."""
        self.call(Opcode.DESTROY, 0, b"", 0, allow_no_reply=True)

    def interrupt(self, unique: int) -> None:
        """FUSE_INTERRUPT for request ``unique``; daemons may complete it without a reply."""
        self.call(Opcode.INTERRUPT, 0, abi.INTERRUPT_IN.pack(unique), 0, allow_no_reply=True)

    # -- inodes -------------------------------------------------------------------------------

    def lookup(self, parent: int, name: str | bytes) -> EntryOut:
        return parse_entry(
            self.call(Opcode.LOOKUP, parent, _name(name), abi.ENTRY_OUT.size), Opcode.LOOKUP
        )

    def forget(self, nodeid: int, nlookup: int = 1) -> None:
        """FORGET on the hiprio queue; no reply, but wait for the daemon to consume it."""
        self.call(Opcode.FORGET, nodeid, abi.FORGET_IN.pack(nlookup), None, queue=HIPRIO_QUEUE)

    def batch_forget(self, forgets: Sequence[tuple[int, int]]) -> None:
        """BATCH_FORGET of ``(nodeid, nlookup)`` pairs on the hiprio queue."""
        body = abi.BATCH_FORGET_IN.pack(len(forgets), 0) + b"".join(
            abi.FORGET_ONE.pack(nodeid, nlookup) for nodeid, nlookup in forgets
        )
        self.call(Opcode.BATCH_FORGET, 0, body, None, queue=HIPRIO_QUEUE)

    def getattr(self, nodeid: int, fh: int | None = None) -> AttrOut:
        body = abi.GETATTR_IN.pack(0 if fh is None else abi.GETATTR_FH, 0, fh or 0)
        return self._attr_out(
            self.call(Opcode.GETATTR, nodeid, body, abi.ATTR_OUT.size), Opcode.GETATTR
        )

    def setattr(
        self,
        nodeid: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | str | None = None,
        mtime_ns: int | str | None = None,
        fh: int | None = None,
        kill_suidgid: bool = False,
    ) -> AttrOut:
        """SETATTR of the given fields; a time of ``"now"`` sends ATIME_NOW/MTIME_NOW."""
        valid = 0
        atime = atime_nsec = mtime = mtime_nsec = 0
        if mode is not None:
            valid |= abi.FATTR_MODE
        if uid is not None:
            valid |= abi.FATTR_UID
        if gid is not None:
            valid |= abi.FATTR_GID
        if size is not None:
            valid |= abi.FATTR_SIZE
        if fh is not None:
            valid |= abi.FATTR_FH
        if kill_suidgid:
            valid |= abi.FATTR_KILL_SUIDGID
        if atime_ns == "now":
            valid |= abi.FATTR_ATIME | abi.FATTR_ATIME_NOW
        elif atime_ns is not None:
            valid |= abi.FATTR_ATIME
            atime, atime_nsec = divmod(int(atime_ns), 1_000_000_000)
        if mtime_ns == "now":
            valid |= abi.FATTR_MTIME | abi.FATTR_MTIME_NOW
        elif mtime_ns is not None:
            valid |= abi.FATTR_MTIME
            mtime, mtime_nsec = divmod(int(mtime_ns), 1_000_000_000)
        body = abi.SETATTR_IN.pack(
            valid,
            0,
            fh or 0,
            size or 0,
            0,
            atime & 0xFFFF_FFFF_FFFF_FFFF,
            mtime & 0xFFFF_FFFF_FFFF_FFFF,
            0,
            atime_nsec,
            mtime_nsec,
            0,
            mode or 0,
            0,
            uid or 0,
            gid or 0,
            0,
        )
        return self._attr_out(
            self.call(Opcode.SETATTR, nodeid, body, abi.ATTR_OUT.size), Opcode.SETATTR
        )

    def readlink(self, nodeid: int, size: int = 4096) -> bytes:
        return self.call(Opcode.READLINK, nodeid, b"", size)

    def symlink(self, parent: int, name: str | bytes, target: str | bytes) -> EntryOut:
        payload = self.call(
            Opcode.SYMLINK, parent, (_name(name), _name(target)), abi.ENTRY_OUT.size
        )
        return parse_entry(payload, Opcode.SYMLINK)

    def mknod(
        self, parent: int, name: str | bytes, mode: int, rdev: int = 0, umask: int = 0
    ) -> EntryOut:
        body = (abi.MKNOD_IN.pack(mode, rdev, umask, 0), _name(name))
        return parse_entry(self.call(Opcode.MKNOD, parent, body, abi.ENTRY_OUT.size), Opcode.MKNOD)

    def mkdir(self, parent: int, name: str | bytes, mode: int = 0o755, umask: int = 0) -> EntryOut:
        body = (abi.MKDIR_IN.pack(mode, umask), _name(name))
        return parse_entry(self.call(Opcode.MKDIR, parent, body, abi.ENTRY_OUT.size), Opcode.MKDIR)

    def unlink(self, parent: int, name: str | bytes) -> None:
        self.call(Opcode.UNLINK, parent, _name(name), 0)

    def rmdir(self, parent: int, name: str | bytes) -> None:
        self.call(Opcode.RMDIR, parent, _name(name), 0)

    def rename(self, parent: int, name: str | bytes, newparent: int, newname: str | bytes) -> None:
        body = (abi.RENAME_IN.pack(newparent), _name(name) + _name(newname))
        self.call(Opcode.RENAME, parent, body, 0)

    def rename2(
        self, parent: int, name: str | bytes, newparent: int, newname: str | bytes, flags: int = 0
    ) -> None:
        body = (abi.RENAME2_IN.pack(newparent, flags, 0), _name(name) + _name(newname))
        self.call(Opcode.RENAME2, parent, body, 0)

    def link(self, nodeid: int, newparent: int, newname: str | bytes) -> EntryOut:
        body = (abi.LINK_IN.pack(nodeid), _name(newname))
        return parse_entry(self.call(Opcode.LINK, newparent, body, abi.ENTRY_OUT.size), Opcode.LINK)

    def access(self, nodeid: int, mask: int) -> None:
        self.call(Opcode.ACCESS, nodeid, abi.ACCESS_IN.pack(mask, 0), 0)

    def statfs(self, nodeid: int = abi.ROOT_ID) -> StatfsOut:
        payload = self.call(Opcode.STATFS, nodeid, b"", abi.STATFS_OUT.size)
        return StatfsOut._make(_unpack(abi.STATFS_OUT, payload, Opcode.STATFS)[:8])

    def syncfs(self, nodeid: int = abi.ROOT_ID) -> None:
        self.call(Opcode.SYNCFS, nodeid, abi.SYNCFS_IN.pack(0), 0)

    # -- files --------------------------------------------------------------------------------

    def open(self, nodeid: int, flags: int = os.O_RDONLY, open_flags: int = 0) -> OpenOut:
        payload = self.call(
            Opcode.OPEN, nodeid, abi.OPEN_IN.pack(flags, open_flags), abi.OPEN_OUT.size
        )
        return OpenOut._make(_unpack(abi.OPEN_OUT, payload, Opcode.OPEN)[:2])

    def create(
        self,
        parent: int,
        name: str | bytes,
        mode: int = 0o644,
        flags: int = os.O_RDWR | os.O_CREAT,
        umask: int = 0,
        open_flags: int = 0,
    ) -> tuple[EntryOut, OpenOut]:
        body = (abi.CREATE_IN.pack(flags, mode, umask, open_flags), _name(name))
        payload = self.call(Opcode.CREATE, parent, body, abi.ENTRY_OUT.size + abi.OPEN_OUT.size)
        entry = parse_entry(payload, Opcode.CREATE)
        opened = _unpack(abi.OPEN_OUT, payload, Opcode.CREATE, abi.ENTRY_OUT.size)
        return entry, OpenOut(opened[0], opened[1])

    def tmpfile(
        self, parent: int, mode: int = 0o600, flags: int = os.O_RDWR | os.O_TMPFILE,
        umask: int = 0, open_flags: int = 0,
    ) -> tuple[EntryOut, OpenOut]:
        """FUSE_TMPFILE as Linux sends it for open(2) with O_TMPFILE (the name is ``/``)."""
        body = (abi.CREATE_IN.pack(flags, mode, umask, open_flags), b"/\0")
        payload = self.call(Opcode.TMPFILE, parent, body, abi.ENTRY_OUT.size + abi.OPEN_OUT.size)
        entry = parse_entry(payload, Opcode.TMPFILE)
        opened = _unpack(abi.OPEN_OUT, payload, Opcode.TMPFILE, abi.ENTRY_OUT.size)
        return entry, OpenOut(opened[0], opened[1])

    # -- locks --------------------------------------------------------------------------------

    @staticmethod
    def _lk_body(fh: int, owner: int, start: int, end: int, lock_type: int, pid: int,
                 flock: bool) -> bytes:
        return abi.LK_IN.pack(fh, owner, start, end, lock_type, pid,
                              abi.LK_FLOCK if flock else 0, 0)

    def getlk(self, nodeid: int, fh: int, owner: int, start: int = 0, end: int = OFFSET_MAX,
              lock_type: int = 1, pid: int = 0) -> LockOut:
        """F_GETLK of ``start``..``end`` (inclusive; OFFSET_MAX: to the end); type 1 is F_WRLCK."""
        body = self._lk_body(fh, owner, start, end, lock_type, pid, False)
        payload = self.call(Opcode.GETLK, nodeid, body, abi.LK_OUT.size)
        return LockOut._make(_unpack(abi.LK_OUT, payload, Opcode.GETLK))

    def setlk(self, nodeid: int, fh: int, owner: int, start: int = 0, end: int = OFFSET_MAX,
              lock_type: int = 1, pid: int = 0, *, flock: bool = False) -> None:
        """F_SETLK (or flock(LOCK_NB) with ``flock``); types 0 F_RDLCK, 1 F_WRLCK, 2 F_UNLCK."""
        self.call(Opcode.SETLK, nodeid, self._lk_body(fh, owner, start, end, lock_type, pid,
                                                      flock), 0)

    def submit_setlkw(self, nodeid: int, fh: int, owner: int, start: int = 0,
                      end: int = OFFSET_MAX, lock_type: int = 1, pid: int = 0, *,
                      flock: bool = False) -> RequestTicket:
        """F_SETLKW without waiting for it: collect the answer with :meth:`wait`."""
        return self.submit(Opcode.SETLKW, nodeid,
                           self._lk_body(fh, owner, start, end, lock_type, pid, flock), 0)

    def read(
        self,
        nodeid: int,
        fh: int,
        offset: int,
        size: int,
        *,
        flags: int = 0,
        read_flags: int = 0,
        lock_owner: int = 0,
    ) -> bytes:
        body = abi.READ_IN.pack(fh, offset, size, read_flags, lock_owner, flags, 0)
        return self.call(Opcode.READ, nodeid, body, size)

    def write(
        self,
        nodeid: int,
        fh: int,
        offset: int,
        data: bytes | memoryview,
        *,
        flags: int = 0,
        write_flags: int = 0,
        lock_owner: int = 0,
    ) -> int:
        """WRITE; returns the count the daemon reports (which may be short)."""
        header = abi.WRITE_IN.pack(fh, offset, len(data), write_flags, lock_owner, flags, 0)
        payload = self.call(Opcode.WRITE, nodeid, (header, data), abi.WRITE_OUT.size)
        return _unpack(abi.WRITE_OUT, payload, Opcode.WRITE)[0]

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> None:
        self.call(Opcode.FLUSH, nodeid, abi.FLUSH_IN.pack(fh, 0, 0, lock_owner), 0)

    def release(
        self, nodeid: int, fh: int, flags: int = 0, release_flags: int = 0, lock_owner: int = 0
    ) -> None:
        self.call(
            Opcode.RELEASE, nodeid, abi.RELEASE_IN.pack(fh, flags, release_flags, lock_owner), 0
        )

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        body = abi.FSYNC_IN.pack(fh, abi.FSYNC_FDATASYNC if datasync else 0, 0)
        self.call(Opcode.FSYNC, nodeid, body, 0)

    def fallocate(self, nodeid: int, fh: int, offset: int, length: int, mode: int = 0) -> None:
        self.call(Opcode.FALLOCATE, nodeid, abi.FALLOCATE_IN.pack(fh, offset, length, mode, 0), 0)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        payload = self.call(
            Opcode.LSEEK, nodeid, abi.LSEEK_IN.pack(fh, offset, whence, 0), abi.LSEEK_OUT.size
        )
        return _unpack(abi.LSEEK_OUT, payload, Opcode.LSEEK)[0]

    def copy_file_range(
        self,
        nodeid_in: int,
        fh_in: int,
        off_in: int,
        nodeid_out: int,
        fh_out: int,
        off_out: int,
        length: int,
        flags: int = 0,
    ) -> int:
        body = abi.COPY_FILE_RANGE_IN.pack(
            fh_in, off_in, nodeid_out, fh_out, off_out, length, flags
        )
        payload = self.call(Opcode.COPY_FILE_RANGE, nodeid_in, body, abi.WRITE_OUT.size)
        return _unpack(abi.WRITE_OUT, payload, Opcode.COPY_FILE_RANGE)[0]

    # -- directories --------------------------------------------------------------------------

    def opendir(self, nodeid: int, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> OpenOut:
        payload = self.call(Opcode.OPENDIR, nodeid, abi.OPEN_IN.pack(flags, 0), abi.OPEN_OUT.size)
        return OpenOut._make(_unpack(abi.OPEN_OUT, payload, Opcode.OPENDIR)[:2])

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> list[Dirent]:
        body = abi.READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
        return parse_dirents(self.call(Opcode.READDIR, nodeid, body, size))

    def readdirplus(
        self, nodeid: int, fh: int, offset: int = 0, size: int = 4096
    ) -> list[DirentPlus]:
        body = abi.READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
        return parse_direntplus(self.call(Opcode.READDIRPLUS, nodeid, body, size))

    def releasedir(self, nodeid: int, fh: int) -> None:
        self.call(Opcode.RELEASEDIR, nodeid, abi.RELEASE_IN.pack(fh, 0, 0, 0), 0)

    def fsyncdir(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        body = abi.FSYNC_IN.pack(fh, abi.FSYNC_FDATASYNC if datasync else 0, 0)
        self.call(Opcode.FSYNCDIR, nodeid, body, 0)

    def listdir(self, nodeid: int) -> list[bytes]:
        """Every name in directory ``nodeid`` (OPENDIR, READDIR until empty, RELEASEDIR)."""
        handle = self.opendir(nodeid)
        names = []
        offset = 0
        try:
            while entries := self.readdir(nodeid, handle.fh, offset):
                names.extend(entry.name for entry in entries)
                offset = entries[-1].off
        finally:
            self.releasedir(nodeid, handle.fh)
        return names

    # -- extended attributes ------------------------------------------------------------------

    def getxattr(self, nodeid: int, name: str | bytes, size: int = 65536) -> bytes:
        """The attribute's value (``size`` > 0 is the room offered for it)."""
        return self.call(
            Opcode.GETXATTR, nodeid, (abi.GETXATTR_IN.pack(size, 0), _name(name)), size
        )

    def getxattr_size(self, nodeid: int, name: str | bytes) -> int:
        """GETXATTR with size 0: how large the value is."""
        payload = self.call(
            Opcode.GETXATTR,
            nodeid,
            (abi.GETXATTR_IN.pack(0, 0), _name(name)),
            abi.GETXATTR_OUT.size,
        )
        return _unpack(abi.GETXATTR_OUT, payload, Opcode.GETXATTR)[0]

    def listxattr(self, nodeid: int, size: int = 65536) -> list[bytes]:
        payload = self.call(Opcode.LISTXATTR, nodeid, abi.GETXATTR_IN.pack(size, 0), size)
        return [name for name in payload.split(b"\0") if name]

    def listxattr_size(self, nodeid: int) -> int:
        payload = self.call(
            Opcode.LISTXATTR, nodeid, abi.GETXATTR_IN.pack(0, 0), abi.GETXATTR_OUT.size
        )
        return _unpack(abi.GETXATTR_OUT, payload, Opcode.LISTXATTR)[0]

    def setxattr(
        self, nodeid: int, name: str | bytes, value: bytes, flags: int = 0, setxattr_flags: int = 0
    ) -> None:
        """SETXATTR, in the SETXATTR_EXT layout when INIT negotiated it (as Linux does)."""
        if self._setxattr_ext:
            header = abi.SETXATTR_IN.pack(len(value), flags, setxattr_flags, 0)
        else:
            header = abi.SETXATTR_IN_COMPAT.pack(len(value), flags)
        self.call(Opcode.SETXATTR, nodeid, (header, _name(name), value), 0)

    def removexattr(self, nodeid: int, name: str | bytes) -> None:
        self.call(Opcode.REMOVEXATTR, nodeid, _name(name), 0)

    # -- helpers and lifetime -----------------------------------------------------------------

    @staticmethod
    def _attr_out(payload: bytes, opcode: int) -> AttrOut:
        values = _unpack(abi.ATTR_OUT, payload, opcode)
        return AttrOut(values[0], values[1], Attr._make(values[3:]))

    def close(self) -> None:
        """Drop guest-memory views and close the front-end (disconnecting); idempotent."""
        for slot in self._all_slots:
            slot.in_view.release()
            slot.out_view.release()
        self._all_slots.clear()
        self._free_slots.clear()
        self._pending.clear()
        self.frontend.close()

    def __enter__(self) -> FuseClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode {opcode}"
