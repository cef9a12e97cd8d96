"""Fuzz targets for the two parsers a hostile guest feeds directly: the FUSE request decoder
(behind :class:`~virtiofsd.fuse.router.FuseRouter`) and the split-ring walker
(:class:`~virtiofsd.virtio.split_queue.SplitQueue` with :func:`~virtiofsd.virtio.chain.walk_chain`).

Shared by the bounded hypothesis test (``tests/core_tests/test_fuzz.py``) and the long run
(``bench/fuzz_long.py``).  Both call the targets directly, without sockets or threads, so a run
spends its time in the code under test.

What counts as a crash (:class:`Crash`, or any exception escaping a target):

- FUSE: ``handle_chain`` (or, every other input, the compiled worker's ``answer`` path, see
  :mod:`fakes.answering`) raising; a return value outside ``[0, writable capacity]``; a reply
  header whose length differs from the returned count, whose unique is not the request's, or
  whose error is positive; anything the router logs with a traceback (it answers EIO to an
  unexpected exception, which hides the bug from the guest but not from us).
- Ring: ``pop`` raising anything but :class:`~virtiofsd.errors.GuestProtocolError`; an invalid
  chain naming a head outside the queue; a chain whose buffers hold more bytes than its
  descriptors claim; more chains than the guest published; and, where the compiled queue is
  built, any difference between it and the Python one on the same layout
  (:meth:`RingTarget.compare`): the Python walker is the reference.

Inputs are built from :data:`FUSE_SEEDS`, one well-formed request per opcode, by the mutations
of :func:`mutate_request`, which the long run draws from :mod:`random` and the hypothesis test
from its own strategies (through a ``random.Random`` it seeds).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct

from fakes.answering import serve_by_answer
from fakes.memfs import MemFs
from virtiofsd.config import Config
from virtiofsd.errors import GuestProtocolError
from virtiofsd.fuse import abi
from virtiofsd.fuse.router import FuseRouter
from virtiofsd.manager import make_plugin_manager
from virtiofsd.virtio.chain import InvalidChainError
from virtiofsd.virtio.memory import GuestMemory, MappedRegion
from virtiofsd.virtio.native_queue import NATIVE_AVAILABLE, NativeSplitQueue
from virtiofsd.virtio.split_queue import SplitQueue

Op = abi.Opcode
F = abi.InitFlag

#: Values that sit on the edges the decoder checks (sizes, offsets, counts).
INTERESTING_32 = (0, 1, 7, 8, 15, 16, 39, 40, 41, 4095, 4096, 65536, 131072, 1 << 20,
                  0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
INTERESTING_64 = INTERESTING_32 + ((1 << 63) - 1, 1 << 63, (1 << 64) - 1)


class Crash(AssertionError):
    """The code under test misbehaved on an input (see the module docstring)."""


def _empty(folder: str) -> None:
    """Remove everything in ``folder`` (what the previous round of inputs created)."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


class _TracebackCatcher(logging.Handler):
    """Remembers every record logged with exception information."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def _name(name: bytes) -> bytes:
    return name + b"\0"


#: One well-formed argument block per opcode (the header is added by :func:`encode_request`).
FUSE_SEEDS: list[tuple[int, int, bytes]] = [
    (Op.LOOKUP, abi.ROOT_ID, _name(b"file")),
    (Op.FORGET, 2, abi.FORGET_IN.pack(1)),
    (Op.BATCH_FORGET, 0, abi.BATCH_FORGET_IN.pack(2, 0) + abi.FORGET_ONE.pack(2, 1)
     + abi.FORGET_ONE.pack(3, 1)),
    (Op.GETATTR, abi.ROOT_ID, abi.GETATTR_IN.pack(0, 0, 0)),
    (Op.SETATTR, 2, abi.SETATTR_IN.pack(abi.FATTR_MODE | abi.FATTR_SIZE, 0, 0, 10, 0, 0, 0, 0,
                                        0, 0, 0, 0o100644, 0, 0, 0, 0)),
    (Op.READLINK, 2, b""),
    (Op.SYMLINK, abi.ROOT_ID, _name(b"link") + _name(b"target")),
    (Op.MKNOD, abi.ROOT_ID, abi.MKNOD_IN.pack(0o010644, 0, 0o022, 0) + _name(b"fifo")),
    (Op.MKDIR, abi.ROOT_ID, abi.MKDIR_IN.pack(0o755, 0o022) + _name(b"dir")),
    (Op.UNLINK, abi.ROOT_ID, _name(b"file")),
    (Op.RMDIR, abi.ROOT_ID, _name(b"dir")),
    (Op.RENAME, abi.ROOT_ID, abi.RENAME_IN.pack(abi.ROOT_ID) + _name(b"a") + _name(b"b")),
    (Op.RENAME2, abi.ROOT_ID, abi.RENAME2_IN.pack(abi.ROOT_ID, 1, 0) + _name(b"a") + _name(b"b")),
    (Op.LINK, abi.ROOT_ID, abi.LINK_IN.pack(2) + _name(b"hard")),
    (Op.OPEN, 2, abi.OPEN_IN.pack(os.O_RDWR, 0)),
    (Op.READ, 2, abi.READ_IN.pack(1, 0, 4096, 0, 0, 0, 0)),
    (Op.WRITE, 2, abi.WRITE_IN.pack(1, 0, 5, 0, 0, 0, 0) + b"hello"),
    (Op.STATFS, abi.ROOT_ID, b""),
    (Op.RELEASE, 2, abi.RELEASE_IN.pack(1, 0, 0, 0)),
    (Op.FSYNC, 2, abi.FSYNC_IN.pack(1, 1, 0)),
    (Op.SETXATTR, 2, abi.SETXATTR_IN.pack(3, 0, 0, 0) + _name(b"user.x") + b"abc"),
    (Op.GETXATTR, 2, abi.GETXATTR_IN.pack(64, 0) + _name(b"user.x")),
    (Op.LISTXATTR, 2, abi.GETXATTR_IN.pack(64, 0)),
    (Op.REMOVEXATTR, 2, _name(b"user.x")),
    (Op.FLUSH, 2, abi.FLUSH_IN.pack(1, 0, 0, 0)),
    (Op.INIT, 0, abi.INIT_IN.pack(7, 38, 65536, F.ASYNC_READ | F.INIT_EXT | F.MAX_PAGES, 0)),
    (Op.OPENDIR, abi.ROOT_ID, abi.OPEN_IN.pack(os.O_RDONLY, 0)),
    (Op.READDIR, abi.ROOT_ID, abi.READ_IN.pack(1, 0, 4096, 0, 0, 0, 0)),
    (Op.READDIRPLUS, abi.ROOT_ID, abi.READ_IN.pack(1, 0, 4096, 0, 0, 0, 0)),
    (Op.RELEASEDIR, abi.ROOT_ID, abi.RELEASE_IN.pack(1, 0, 0, 0)),
    (Op.FSYNCDIR, abi.ROOT_ID, abi.FSYNC_IN.pack(1, 0, 0)),
    (Op.GETLK, 2, abi.LK_IN.pack(1, 0, 0, 10, 1, 0, 0, 0)),
    (Op.SETLK, 2, abi.LK_IN.pack(1, 0, 0, 10, 1, 0, 0, 0)),
    (Op.ACCESS, 2, abi.ACCESS_IN.pack(4, 0)),
    (Op.CREATE, abi.ROOT_ID, abi.CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o644, 0o022, 0)
     + _name(b"new")),
    (Op.INTERRUPT, 0, abi.INTERRUPT_IN.pack(4)),
    (Op.BMAP, 2, abi.BMAP_IN.pack(0, 4096, 0)),
    (Op.DESTROY, 0, b""),
    (Op.IOCTL, 2, abi.IOCTL_IN.pack(1, 0, 0x5401, 0, 0, 0)),
    (Op.POLL, 2, abi.POLL_IN.pack(1, 0, 0, 1)),
    (Op.FALLOCATE, 2, abi.FALLOCATE_IN.pack(1, 0, 4096, 0, 0)),
    (Op.LSEEK, 2, abi.LSEEK_IN.pack(1, 0, 3, 0)),
    (Op.COPY_FILE_RANGE, 2, abi.COPY_FILE_RANGE_IN.pack(1, 0, 2, 1, 100, 10, 0)),
    (Op.SYNCFS, abi.ROOT_ID, abi.SYNCFS_IN.pack(0)),
    (Op.TMPFILE, abi.ROOT_ID, abi.CREATE_IN.pack(os.O_RDWR, 0o600, 0, 0) + _name(b"tmp")),
    (Op.STATX, 2, bytes(24)),
    (99, abi.ROOT_ID, b"unknown opcode"),
]

_SUPP_GROUPS_EXTENSION = (abi.EXT_HEADER.pack(16, abi.EXT_SUP_GROUPS) + abi.SUPP_GROUPS.pack(1)
                          + struct.pack("<I", 100))
_SECCTX_EXTENSION = (abi.EXT_HEADER.pack(32, 1) + abi.SECCTX.pack(3, 0) + b"security.x\0"
                     + b"abc" + bytes(2))


def encode_request(opcode: int, nodeid: int, args: bytes, *, unique: int = 2,
                   extensions: bytes = b"", length: int | None = None,
                   extlen: int | None = None) -> bytes:
    """``fuse_in_header`` + ``args`` + ``extensions``; ``length``/``extlen`` may lie."""
    total = abi.IN_HEADER.size + len(args) + len(extensions)
    header = abi.IN_HEADER.pack(
        (total if length is None else length) & 0xFFFFFFFF, opcode & 0xFFFFFFFF, unique,
        nodeid & ((1 << 64) - 1), 0, 0, 77,
        (len(extensions) // 8 if extlen is None else extlen) & 0xFFFF, 0)
    return header + args + extensions


def mutate_request(rng: random.Random) -> tuple[bytes, list[int], list[int]]:
    """A request derived from a seed by a few random mutations.

    :returns: the request bytes, the cut points splitting it into readable buffers, and the
        sizes of the writable buffers.
    """
    opcode, nodeid, args = rng.choice(FUSE_SEEDS)
    if rng.random() < 0.2:
        nodeid = rng.choice((0, 1, 2, 3, 5, rng.choice(INTERESTING_64)))
    extensions = b""
    if rng.random() < 0.15:
        extensions = rng.choice((_SUPP_GROUPS_EXTENSION, _SECCTX_EXTENSION,
                                 _SUPP_GROUPS_EXTENSION + _SECCTX_EXTENSION))
    data = bytearray(args)
    for _ in range(rng.randrange(0, 4)):
        _mutate_bytes(rng, data)
    length = extlen = None
    roll = rng.random()
    if roll < 0.1:
        length = rng.choice(INTERESTING_32)
    elif roll < 0.2:
        length = abi.IN_HEADER.size + len(data) + len(extensions) + rng.randint(-16, 16)
    if rng.random() < 0.08:
        extlen = rng.choice((0, 1, 2, 3, 4, 0xFF, 0xFFFF))
    if rng.random() < 0.05:
        opcode = rng.choice((0, 53, 4096, 0xFFFFFFFF, rng.randrange(1 << 32)))
    request = bytearray(encode_request(opcode, nodeid, bytes(data), unique=rng.randrange(1 << 64),
                                       extensions=extensions, length=length, extlen=extlen))
    if rng.random() < 0.1:
        _mutate_bytes(rng, request)
    if rng.random() < 0.05:
        del request[rng.randrange(len(request) + 1):]
    cuts = sorted(rng.randrange(len(request) + 1) for _ in range(rng.choice((0, 0, 1, 1, 2, 5))))
    if rng.random() < 0.5 and len(request) > abi.IN_HEADER.size:
        cuts.append(abi.IN_HEADER.size)  # the Linux layout: the header in a buffer of its own
        cuts.sort()
    writable = rng.choice(([16, 4096], [4096], [16, 65536], [], [0], [8], [15, 1, 100],
                           [rng.randrange(0, 300)], [16, 16], [1] * 40))
    return bytes(request), cuts, list(writable)


def _mutate_bytes(rng: random.Random, data: bytearray) -> None:
    """One classic mutation: flip, set an interesting integer, insert, delete or truncate."""
    choice = rng.randrange(6)
    if choice == 0 and data:
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    elif choice == 1 and len(data) >= 4:
        position = rng.randrange(len(data) - 3)
        struct.pack_into("<I", data, position, rng.choice(INTERESTING_32))
    elif choice == 2 and len(data) >= 8:
        position = rng.randrange(len(data) - 7)
        struct.pack_into("<Q", data, position, rng.choice(INTERESTING_64))
    elif choice == 3:
        position = rng.randrange(len(data) + 1)
        data[position:position] = rng.choice((b"\0", b"/", b"..", b"\xff" * 8, b"x" * 300,
                                              bytes(rng.randrange(0, 64))))
    elif choice == 4 and data:
        start = rng.randrange(len(data))
        del data[start:start + rng.randrange(1, 17)]
    elif data:
        del data[rng.randrange(len(data)):]


class FuseTarget:
    """A router over a file system plugin, mounted (INIT done), fed whole requests.

    ``backend`` is ``"memfs"`` (the in-memory fake: fast, tests the decoder and the router) or
    ``"passthrough"`` (the real file system over ``share``: hostile values reach system calls).
    A passthrough share should be a small tmpfs (``bench/fuzz_long.py`` says how): FALLOCATE and
    sparse writes with fuzzed sizes are real.  ``skip_opcodes`` are answered by nobody (the
    request is not fed), for a share that cannot take them.
    """

    #: Requests after which the file system starts afresh, so its tables stay small.
    RESET_EVERY = 2000

    def __init__(self, backend: str = "memfs", share: str | None = None,
                 skip_opcodes: frozenset[int] = frozenset()) -> None:
        if backend not in ("memfs", "passthrough") or (backend == "passthrough") != bool(share):
            raise ValueError(f"backend {backend!r} with share {share!r}")
        self.backend = backend
        self.share = share
        self.skip_opcodes = skip_opcodes
        self._catcher = _TracebackCatcher()
        logger = logging.getLogger("virtiofsd")
        logger.addHandler(self._catcher)
        self._logger = logger
        self._pm = None
        self.reset()

    def close(self) -> None:
        self._unconfigure()
        self._logger.removeHandler(self._catcher)

    def _unconfigure(self) -> None:
        if self._pm is not None and self.backend == "passthrough":
            self._pm.hook.virtiofsd_unconfigure(config=self._config)
        self._pm = None

    def reset(self) -> None:
        """Start afresh: a new file system (emptied share), mounted, with node 2 and handle 1."""
        self._unconfigure()
        if self.backend == "memfs":
            self._config = Config(shared_dir="/srv")
            self._pm = make_plugin_manager(load_entry_points=False, plugins=[MemFs()])
        else:
            from virtiofsd.config import Sandbox
            from virtiofsd_plugins.inode_handles import never
            from virtiofsd_plugins.passthrough import plugin

            _empty(self.share)
            self._config = Config(shared_dir=self.share, sandbox=Sandbox.NONE)
            self._pm = make_plugin_manager(load_entry_points=False, plugins=[plugin, never])
            self._pm.hook.virtiofsd_configure(config=self._config, pm=self._pm)
        self.router = FuseRouter(self._pm, self._config)
        self.served = 0
        self._mount()

    def _mount(self) -> None:
        """INIT, then give the seeds something to act on: node 2 an open file (handle 1)."""
        init = encode_request(*FUSE_SEEDS[[seed[0] for seed in FUSE_SEEDS].index(Op.INIT)])
        self.feed(init, [], [16, 4096])
        if not self.router.session.initialized:
            raise Crash("the seed INIT did not start a session")
        self.feed(encode_request(Op.CREATE, abi.ROOT_ID, abi.CREATE_IN.pack(
            os.O_RDWR | os.O_CREAT, 0o644, 0, 0) + _name(b"file")), [], [16, 4096])
        self.feed(encode_request(Op.MKDIR, abi.ROOT_ID, abi.MKDIR_IN.pack(0o755, 0)
                                 + _name(b"a")), [], [16, 4096])

    def feed(self, request: bytes, cuts: list[int], writable_sizes: list[int]) -> int:
        """Serve one request cut into readable buffers at ``cuts``; check the reply."""
        if len(request) >= 8 and struct.unpack_from("<I", request, 4)[0] in self.skip_opcodes:
            return 0
        self.served += 1
        if self.served > self.RESET_EVERY:
            self.reset()
        edges = [0, *cuts, len(request)]
        readable = [memoryview(bytearray(request[lo:hi])) for lo, hi in zip(edges, edges[1:])
                    if hi > lo]
        writable = [memoryview(bytearray(size)) for size in writable_sizes]
        capacity = sum(writable_sizes)
        if self.served % 2:
            written = self.router.handle_chain(1, readable, writable)
        else:
            written = serve_by_answer(self.router, 1, readable, writable)
        if not isinstance(written, int) or not 0 <= written <= capacity:
            raise Crash(f"the router returned {written!r} for {capacity} writable bytes")
        if written:
            reply = b"".join(bytes(view) for view in writable)
            length, error, unique = abi.OUT_HEADER.unpack_from(reply)
            sent_unique = abi.IN_HEADER.unpack_from(request)[2]
            if length != written or error > 0 or unique != sent_unique:
                raise Crash(f"reply header ({length}, {error}, {unique}) for {written} bytes "
                            f"written, request unique {sent_unique}")
            if error < 0 and written != abi.OUT_HEADER.size:
                raise Crash(f"an error reply of {written} bytes")
        if self._catcher.records:
            record = self._catcher.records[0]
            self._catcher.records.clear()
            raise Crash(f"the router logged a traceback: {record.getMessage()}") from (
                record.exc_info[1] if record.exc_info else None)
        if not self.router.session.initialized:
            self._mount()  # after DESTROY or an INIT that failed, so the next input is served
        return written


# --- The ring -------------------------------------------------------------------------------------

RING_BASE = 0x10000
RING_SIZE = 0x8000
#: A second region right after the first (chains may span both) and a hole after it.
SECOND_BASE = RING_BASE + RING_SIZE
SECOND_SIZE = 0x2000
DESC_GPA = RING_BASE
AVAIL_GPA = RING_BASE + 0x1000
USED_GPA = RING_BASE + 0x2000
DATA_GPA = RING_BASE + 0x3000
_MEMORY_END = SECOND_BASE + SECOND_SIZE


class RingTarget:
    """A split ring in a two-region guest memory whose descriptors and avail ring are fuzzed."""

    def __init__(self) -> None:
        self.first = bytearray(RING_SIZE)
        self.second = bytearray(SECOND_SIZE)
        self.memory = GuestMemory([
            MappedRegion(RING_BASE, RING_SIZE, 0x7F00_0000_0000, memoryview(self.first)),
            MappedRegion(SECOND_BASE, SECOND_SIZE, 0x7F10_0000_0000, memoryview(self.second)),
        ])

    def _address(self, rng: random.Random) -> int:
        return rng.choice((
            DATA_GPA + rng.randrange(0, 0x1000), DESC_GPA, DATA_GPA,
            SECOND_BASE - rng.randrange(0, 64), _MEMORY_END - rng.randrange(0, 64),
            _MEMORY_END + rng.randrange(0, 1 << 20), rng.randrange(0, RING_BASE),
            rng.choice(INTERESTING_64), rng.randrange(1 << 64),
        ))

    def _length(self, rng: random.Random) -> int:
        return rng.choice((0, 1, 16, 40, 64, 256, 4096, rng.randrange(0, 0x3000),
                           rng.choice(INTERESTING_32), SECOND_SIZE + 32))

    def random_layout(self, rng: random.Random) -> tuple[int, bool, bool, int, int]:
        """Fill the descriptor table, indirect tables, avail ring and used index at random.

        :returns: (queue size, event_idx, indirect, last_avail, number of chains published).
        """
        size = rng.choice((1, 2, 4, 8, 16, 64, 256))
        event_idx = rng.random() < 0.5
        indirect = rng.random() < 0.7
        view = memoryview(self.first)
        view[:DATA_GPA - RING_BASE] = bytes(DATA_GPA - RING_BASE)
        for index in range(size):
            self._write_descriptor(rng, DESC_GPA + 16 * index, size)
        # Indirect tables live in the data area, where descriptors tend to point.
        for _ in range(rng.randrange(0, 3)):
            table = DATA_GPA + 16 * rng.randrange(0, 0x100)
            for index in range(rng.randrange(1, 9)):
                self._write_descriptor(rng, table + 16 * index, 8)
        last_avail = rng.choice((0, 1, 0xFFFF, rng.randrange(1 << 16)))
        published = rng.choice((0, 1, 2, size, size + 1, rng.randrange(1 << 16)))
        avail_idx = (last_avail + published) & 0xFFFF
        struct.pack_into("<HH", self.first, AVAIL_GPA - RING_BASE, rng.randrange(4), avail_idx)
        for slot in range(size):
            head = rng.choice((rng.randrange(size), rng.randrange(size), size,
                               rng.randrange(1 << 16)))
            struct.pack_into("<H", self.first, AVAIL_GPA - RING_BASE + 4 + 2 * slot, head)
        struct.pack_into("<HH", self.first, USED_GPA - RING_BASE, 0, rng.randrange(1 << 16))
        return size, event_idx, indirect, last_avail, published

    def _write_descriptor(self, rng: random.Random, gpa: int, table_len: int) -> None:
        flags = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, rng.randrange(1 << 16)))
        if flags & 4 and rng.random() < 0.7:
            addr = DATA_GPA + 16 * rng.randrange(0, 0x100)
            length = 16 * rng.choice((0, 1, 2, 8, table_len, table_len + 1, 4096)) + rng.choice(
                (0, 0, 0, 1, 8))
        else:
            addr, length = self._address(rng), self._length(rng)
        next_index = rng.choice((rng.randrange(max(table_len, 1)), rng.randrange(1 << 16),
                                 table_len))
        buffer = self.first if gpa < SECOND_BASE else self.second
        base = RING_BASE if gpa < SECOND_BASE else SECOND_BASE
        struct.pack_into("<QIHH", buffer, gpa - base, addr, length & 0xFFFFFFFF, flags,
                         next_index)

    def run(self, size: int, event_idx: bool, indirect: bool, last_avail: int,
            published: int, queue_class: type[SplitQueue] = SplitQueue,
            outcomes: list[tuple] | None = None) -> int:
        """Pop (and complete) every chain the layout publishes; returns the chains served.

        ``outcomes``, if given, receives what each pop gave, for :meth:`compare`.
        """
        try:
            queue = queue_class(size, DESC_GPA, AVAIL_GPA, USED_GPA, self.memory,
                                event_idx=event_idx, indirect=indirect, last_avail=last_avail)
        except GuestProtocolError as err:
            if outcomes is not None:
                outcomes.append(("refused", str(err)))
            return 0
        record = outcomes.append if outcomes is not None else _discard
        served = 0
        for _ in range(min(published, size) + 1):
            try:
                chain = queue.pop()
            except InvalidChainError as err:
                record(("invalid", err.head))
                if err.head is not None:
                    if not 0 <= err.head < size:
                        raise Crash(f"invalid chain names head {err.head} of {size}") from err
                    queue.push_used(err.head, 0)
                served += 1
                continue
            except GuestProtocolError:
                record(("ring error",))
                break
            if chain is None:
                record(("empty",))
                break
            record(("chain", chain.head, chain.readable_bytes, chain.writable_bytes,
                    b"".join(chain.readable), sum(view.nbytes for view in chain.writable)))
            served += 1
            if not 0 <= chain.head < size:
                raise Crash(f"chain head {chain.head} outside a queue of {size}")
            # With indirect tables a chain may carry up to size * size descriptors' worth.
            limit = 0xFFFFFFFF * size * (size + 1)
            if chain.readable_bytes + chain.writable_bytes > limit:
                raise Crash(f"chain {chain!r} holds more than its descriptors can claim")
            if chain.writable_bytes != sum(view.nbytes for view in chain.writable):
                raise Crash(f"chain {chain!r}: writable byte count is wrong")
            queue.push_used(chain.head, min(chain.writable_bytes, 0xFFFFFFFF))
            queue.needs_notification()
            queue.enable_notifications()
        if served > published:
            raise Crash(f"{served} chains served, {published} published")
        return served

    def compare(self, layout: tuple[int, bool, bool, int, int]) -> int:
        """Run ``layout`` through the Python queue and the compiled one, each on the same
        memory, and raise :class:`Crash` where their outcomes differ.  Returns the chains the
        Python queue served."""
        snapshot = (bytes(self.first), bytes(self.second))
        expected: list[tuple] = []
        served = self.run(*layout, queue_class=SplitQueue, outcomes=expected)
        if not NATIVE_AVAILABLE:
            return served
        self.first[:], self.second[:] = snapshot
        got: list[tuple] = []
        self.run(*layout, queue_class=NativeSplitQueue, outcomes=got)
        if got != expected:
            difference = next(index for index, (want, have) in enumerate(zip(expected, got))
                              if want != have) if len(got) == len(expected) else len(expected)
            raise Crash(f"layout {layout}: the compiled queue differs at pop {difference}: "
                        f"Python {expected[difference:difference + 1]}, compiled "
                        f"{got[difference:difference + 1]} ({len(expected)} vs {len(got)} pops)")
        return served


def _discard(outcome: tuple) -> None:
    """Where outcomes go when nobody compares them."""
