"""Per-request cost of our daemon and the Rust virtiofsd, driven through the vhost-user socket.

    .venv/bin/python bench/socket_bench.py [--runs 3] [--seconds 1.5] [--ops getattr,read-4k]
        [--depths 1,16] [--daemons ours,rust] [--ours-args "--thread-pool-size 0"] [--no-pin]
        [--inode-file-handles never|prefer|mandatory|default]

Both daemons get the same ``--inode-file-handles`` (default ``never``, the Rust 1.13.2 default;
ours defaults to ``prefer``, which opens a file handle per request on GETATTR and READ's inode).

No guest: the bench is the front-end.  It sets the daemon up the way QEMU does (the test
front-end of :mod:`virtiofsd.testing`), sends FUSE_INIT, then drives the rings itself with a lean
loop: every request of every in-flight slot has its descriptor chain and its argument bytes
written once, up front; sending one is patching a field or two, publishing the head and (when the
daemon asks for it, EVENT_IDX) kicking.  At queue depth N, N slots each run the operation over
and over; a slot starts its next operation as soon as its last reply is in.

Operations (a slot's sequence of requests; an op counts once when its last reply is in):

* ``getattr``; ``lookup`` (LOOKUP then FORGET on the hiprio queue, as Linux sends it);
* ``open-read-4k`` (OPEN, READ 4 KiB, RELEASE);
* ``read-4k``/``read-128k``/``read-1m``, ``write-4k``/``write-128k``/``write-1m``: sequential
  over a 64 MiB file opened once (each slot at its own offset, wrapping);
* ``create`` (CREATE, RELEASE, UNLINK, FORGET: the FORGET keeps the inode table from growing,
  as the guest's would);
* ``readdir-2000``: OPENDIR, READDIR of 4 KiB pages (as Linux asks) until the end of a folder of
  2,000 entries, RELEASEDIR.

Figures per (daemon, op, depth): ops/s, p50 latency of one op, the daemon's CPU time per op
(utime + stime of the whole process from /proc/PID/stat, so every thread counts) and the
bench's own CPU per op.  Each daemon runs ``--runs`` times, alternating, on a fresh shared
folder; the table shows medians and the ratio ours/rust.  By default the daemon is pinned to
CPU 1 and the bench to CPU 0 so neither steals the other's time.  Data buffers are one
descriptor each (Linux splits them per page; the guest benchmark covers that).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

from virtiofsd.fuse import abi
from virtiofsd.testing import running_daemon

Op = abi.Opcode
RUST = os.environ.get("VIRTIOFSD_RUST_REFERENCE", "/var/tmp/virtiofsd-reference/rust-virtiofsd")
QUEUE_SIZE = 1024
FILE_SIZE = 64 << 20
DIR_ENTRIES = 2000
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_DESC = struct.Struct("<QIHH")
_USED = struct.Struct("<II")
_F_NEXT, _F_WRITE = 1, 2
_IN = abi.IN_HEADER
_OUT = abi.OUT_HEADER


def daemon_command(kind: str, extra: list[str]) -> list[str]:
    """``kind`` is ``ours`` or ``rust``, optionally followed by ``+ARGS`` (e.g.
    ``ours+--thread-pool-size=auto``), extra arguments for that variant.  ``ours@PROGRAM``
    runs our daemon with another Python (a script or interpreter that imports another
    version: a before/after comparison within one run)."""
    name, _, variant = kind.partition("+")
    name, _, python = name.partition("@")
    program = [python or sys.executable, "-m", "virtiofsd"] if name == "ours" else [RUST]
    extra = [*extra, *shlex.split(variant)]
    return [*program, "--socket-path", "{socket_path}", "--shared-dir", "{shared_dir}",
            "--sandbox", "none", *extra]


# ---- the driver side of a ring, lean --------------------------------------------------------


class Ring:
    """Driver half of one started split ring, taken over from the test front-end's queue."""

    def __init__(self, queue, memory) -> None:
        self.size = queue.size
        self.mask = queue.size - 1
        self.desc = memory.view(queue.desc_gpa, 16 * queue.size)
        self.avail16 = memory.view(queue.avail_gpa, 6 + 2 * queue.size).cast("H")
        used = memory.view(queue.used_gpa, 6 + 8 * queue.size)
        self.used = used
        self.used16 = used.cast("H")
        self.event_idx = queue.event_idx
        self.used_event = 2 + queue.size
        self.avail_event = (4 + 8 * queue.size) // 2
        self.avail_idx = queue.avail_idx
        self.kicked = self.avail_idx
        self.last_used = self.used16[1]
        self.kick_fd = queue.kick_fd
        self.call_fd = queue.call_fd
        self.next_free = 0

    def take(self, count: int) -> list[int]:
        if self.next_free + count > self.size:
            raise RuntimeError("ring too small for the chains this bench sets up")
        first = self.next_free
        self.next_free += count
        return list(range(first, first + count))

    def write_chain(self, readable: list[tuple[int, int]], writable: list[tuple[int, int]]) -> int:
        buffers = [(gpa, n, 0) for gpa, n in readable] + [(gpa, n, _F_WRITE) for gpa, n in writable]
        indices = self.take(len(buffers))
        for position, (gpa, length, flags) in enumerate(buffers):
            last = position == len(buffers) - 1
            _DESC.pack_into(self.desc, 16 * indices[position], gpa, length,
                            flags | (0 if last else _F_NEXT), 0 if last else indices[position + 1])
        return indices[0]

    def publish(self, head: int) -> None:
        idx = self.avail_idx
        self.avail16[2 + (idx & self.mask)] = head
        idx = (idx + 1) & 0xFFFF
        self.avail16[1] = idx
        self.avail_idx = idx

    def kick(self) -> None:
        new, old = self.avail_idx, self.kicked
        if new == old:
            return
        self.kicked = new
        if self.event_idx:
            event = self.used16[self.avail_event]
            if not (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF:
                return
        elif self.used16[0] & 1:
            return
        os.eventfd_write(self.kick_fd, 1)

    def reap(self) -> list[tuple[int, int]]:
        idx = self.used16[1]
        last = self.last_used
        if idx == last:
            return []
        out = []
        unpack = _USED.unpack_from
        used, mask = self.used, self.mask
        while last != idx:
            out.append(unpack(used, 4 + 8 * (last & mask)))
            last = (last + 1) & 0xFFFF
        self.last_used = last
        if self.event_idx:
            self.avail16[self.used_event] = last
        return out


@dataclass
class Step:
    """One request of a slot: its chain is written once; ``args`` is patched before sending."""

    ring: Ring
    head: int
    header: memoryview  # in-header + arguments
    reply: memoryview | None  # out-header + body
    used_len: int = 0


@dataclass
class Slot:
    index: int
    steps: dict[str, Step] = field(default_factory=dict)
    job: Generator | None = None
    current: Step | None = None
    started: float = 0.0
    data_gpa: int = 0  # the slot's big data buffer (READ reply body / WRITE payload)


class Driver:
    """Builds slots of pre-written chains and runs operations on them."""

    def __init__(self, memory, rings: tuple[Ring, Ring], data_gpas: list[int],
                 depth: int) -> None:
        """``data_gpas``: one buffer of 1 MiB + 4 KiB per slot, allocated once per connection;
        everything else is allocated per case (the caller rewinds the allocator)."""
        self.memory = memory
        self.hiprio, self.request = rings
        self.rings = rings
        for ring in rings:
            ring.next_free = 0
        self.slots = [Slot(i, data_gpa=data_gpas[i]) for i in range(depth)]
        self.unique = 2
        self.pending: dict[tuple[int, int], Slot] = {}
        self.poller = select.poll()
        for ring in self.rings:
            self.poller.register(ring.call_fd, select.POLLIN)

    def add_step(self, slot: Slot, name: str, opcode: int, nodeid: int, args: bytes, *,
                 reply: int | None, data: int = 0, hiprio: bool = False) -> Step:
        """``reply``: reply body room (None: no writable buffer); ``data``: bytes of payload
        taken from the slot's data buffer after the arguments (WRITE)."""
        ring = self.hiprio if hiprio else self.request
        size = _IN.size + len(args)
        gpa = self.memory.alloc(size + 64, align=64)
        header = self.memory.view(gpa, size)
        self.unique += 2
        _IN.pack_into(header, 0, size + data, opcode, self.unique, nodeid, 0, 0, 1, 0, 0)
        header[_IN.size:] = args
        readable = [(gpa, _IN.size)] + ([(gpa + _IN.size, len(args))] if args else [])
        if data:
            readable.append((slot.data_gpa, data))
        writable: list[tuple[int, int]] = []
        out_view = None
        if reply is not None:
            if reply > 4096:  # a READ: the body goes to the slot's data buffer
                out_gpa = self.memory.alloc(64, align=64)
                writable = [(out_gpa, _OUT.size), (slot.data_gpa, reply)]
            else:
                out_gpa = self.memory.alloc(_OUT.size + max(reply, 1), align=64)
                writable = [(out_gpa, _OUT.size)] + ([(out_gpa + _OUT.size, reply)] if reply else [])
            out_view = self.memory.view(out_gpa, _OUT.size + (0 if reply > 4096 else reply))
        head = ring.write_chain(readable, writable)
        step = Step(ring, head, header, out_view)
        slot.steps[name] = step
        return step

    def run(self, job_factory: Callable[[Slot], Generator], seconds: float,
            pid: int) -> dict[str, float]:
        """Run ``job_factory(slot)`` on every slot for ``seconds``; the figures of the run."""
        latencies: list[float] = []
        pending = self.pending
        clock = time.perf_counter
        ops = 0
        cpu0 = _process_cpu(pid)
        self_cpu0 = time.process_time()
        start = clock()
        deadline = start + seconds
        for slot in self.slots:
            self._start_job(slot, job_factory, clock())
        for ring in self.rings:
            ring.kick()
        stopping = False
        poll = self.poller.poll
        rings = self.rings
        while pending:
            progressed = False
            for ring in rings:
                completed = ring.reap()
                if not completed:
                    continue
                progressed = True
                for head, used_len in completed:
                    slot = pending.pop((id(ring), head))
                    step = slot.current
                    step.used_len = used_len
                    try:
                        nxt = slot.job.send(step)
                    except StopIteration:
                        now = clock()
                        latencies.append(now - slot.started)
                        ops += 1
                        if now >= deadline:
                            stopping = True
                        if not stopping:
                            self._start_job(slot, job_factory, now)
                        continue
                    self._send(slot, nxt)
            for ring in rings:
                ring.kick()
            if not progressed:
                ready = poll(10000)
                if not ready:
                    raise TimeoutError(f"no completion within 10 s ({len(pending)} pending)")
                for fd, _events in ready:
                    try:
                        os.eventfd_read(fd)
                    except BlockingIOError:
                        pass
        elapsed = clock() - start
        cpu = _process_cpu(pid) - cpu0
        self_cpu = time.process_time() - self_cpu0
        latencies.sort()
        return {
            "ops": ops,
            "ops_per_s": ops / elapsed,
            "p50_us": latencies[len(latencies) // 2] * 1e6 if latencies else 0.0,
            "daemon_cpu_us": cpu / ops * 1e6 if ops else 0.0,
            "bench_cpu_us": self_cpu / ops * 1e6 if ops else 0.0,
        }

    def _start_job(self, slot: Slot, job_factory, now: float) -> None:
        slot.started = now
        slot.job = job_factory(slot)
        self._send(slot, next(slot.job))

    def _send(self, slot: Slot, step: Step) -> None:
        slot.current = step
        self.pending[(id(step.ring), step.head)] = slot
        step.ring.publish(step.head)


def _process_cpu(pid: int) -> float:
    """utime + stime of the whole process (all its threads, dead ones included), seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _check(step: Step, opcode: str) -> None:
    length, error, _unique = _OUT.unpack_from(step.reply, 0)
    if error:
        raise RuntimeError(f"{opcode} failed: errno {-error}")


# ---- operations -----------------------------------------------------------------------------


@dataclass
class Fixture:
    """What the operations share: node ids and handles set up before timing."""

    root: int = abi.ROOT_ID
    file: int = 0  # a 64 MiB file, read by the read ops
    read_fh: int = 0
    write_file: int = 0
    write_fh: int = 0
    folder: int = 0  # DIR_ENTRIES entries
    small: int = 0  # a 4 KiB file


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def prepare_share(share: Path) -> None:
    with open(share / "data", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(FILE_SIZE >> 20):
            f.write(block)
    with open(share / "written", "wb") as f:
        f.truncate(FILE_SIZE)
    (share / "small").write_bytes(os.urandom(4096))
    folder = share / "folder"
    folder.mkdir()
    for i in range(DIR_ENTRIES):
        (folder / f"entry-{i:05d}").touch()


def make_fixture(client) -> Fixture:
    fixture = Fixture()
    fixture.file = client.lookup(abi.ROOT_ID, "data").nodeid
    fixture.read_fh = client.open(fixture.file, os.O_RDONLY).fh
    fixture.write_file = client.lookup(abi.ROOT_ID, "written").nodeid
    fixture.write_fh = client.open(fixture.write_file, os.O_RDWR).fh
    fixture.small = client.lookup(abi.ROOT_ID, "small").nodeid
    fixture.folder = client.lookup(abi.ROOT_ID, "folder").nodeid
    return fixture


def job_getattr(driver: Driver, fx: Fixture):
    for slot in driver.slots:
        driver.add_step(slot, "getattr", Op.GETATTR, fx.small, abi.GETATTR_IN.pack(0, 0, 0),
                        reply=abi.ATTR_OUT.size)

    def job(slot: Slot):
        step = yield slot.steps["getattr"]
        _check(step, "GETATTR")
    return job


def job_lookup(driver: Driver, fx: Fixture):
    for slot in driver.slots:
        driver.add_step(slot, "lookup", Op.LOOKUP, fx.root, _name("small"),
                        reply=abi.ENTRY_OUT.size)
        driver.add_step(slot, "forget", Op.FORGET, 0, abi.FORGET_IN.pack(1), reply=None,
                        hiprio=True)

    def job(slot: Slot):
        step = yield slot.steps["lookup"]
        _check(step, "LOOKUP")
        nodeid = struct.unpack_from("<Q", step.reply, _OUT.size)[0]
        forget = slot.steps["forget"]
        struct.pack_into("<Q", forget.header, 16, nodeid)
        yield forget
    return job


def job_open_read(driver: Driver, fx: Fixture):
    for slot in driver.slots:
        driver.add_step(slot, "open", Op.OPEN, fx.small, abi.OPEN_IN.pack(os.O_RDONLY, 0),
                        reply=abi.OPEN_OUT.size)
        driver.add_step(slot, "read", Op.READ, fx.small,
                        abi.READ_IN.pack(0, 0, 4096, 0, 0, os.O_RDONLY, 0), reply=4096)
        driver.add_step(slot, "release", Op.RELEASE, fx.small,
                        abi.RELEASE_IN.pack(0, os.O_RDONLY, 0, 0), reply=0)

    def job(slot: Slot):
        steps = slot.steps
        step = yield steps["open"]
        _check(step, "OPEN")
        fh = struct.unpack_from("<Q", step.reply, _OUT.size)[0]
        read, release = steps["read"], steps["release"]
        struct.pack_into("<Q", read.header, _IN.size, fh)
        step = yield read
        _check(step, "READ")
        struct.pack_into("<Q", release.header, _IN.size, fh)
        step = yield release
        _check(step, "RELEASE")
    return job


def job_sequential(size: int, write: bool):
    def setup(driver: Driver, fx: Fixture):
        nodeid, fh = (fx.write_file, fx.write_fh) if write else (fx.file, fx.read_fh)
        for slot in driver.slots:
            if write:
                driver.add_step(slot, "io", Op.WRITE, nodeid,
                                abi.WRITE_IN.pack(fh, 0, size, 0, 0, os.O_RDWR, 0),
                                reply=abi.WRITE_OUT.size, data=size)
            else:
                driver.add_step(slot, "io", Op.READ, nodeid,
                                abi.READ_IN.pack(fh, 0, size, 0, 0, os.O_RDONLY, 0), reply=size)
        stride = size * len(driver.slots)
        offsets = {slot.index: slot.index * size for slot in driver.slots}
        expected = abi.WRITE_OUT.size if write else size

        def job(slot: Slot):
            io = slot.steps["io"]
            offset = offsets[slot.index]
            struct.pack_into("<Q", io.header, _IN.size + 8, offset)
            offsets[slot.index] = (offset + stride) % FILE_SIZE
            step = yield io
            if step.used_len != _OUT.size + expected:
                _check(step, "WRITE" if write else "READ")
                raise RuntimeError(f"short I/O: {step.used_len - _OUT.size} of {expected}")
        return job
    return setup


def job_create(driver: Driver, fx: Fixture):
    for slot in driver.slots:
        name = _name(f"new-{slot.index}")
        driver.add_step(slot, "create", Op.CREATE, fx.root,
                        abi.CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o100644, 0o022, 0) + name,
                        reply=abi.ENTRY_OUT.size + abi.OPEN_OUT.size)
        driver.add_step(slot, "release", Op.RELEASE, 0, abi.RELEASE_IN.pack(0, os.O_RDWR, 0, 0),
                        reply=0)
        driver.add_step(slot, "unlink", Op.UNLINK, fx.root, name, reply=0)
        driver.add_step(slot, "forget", Op.FORGET, 0, abi.FORGET_IN.pack(1), reply=None,
                        hiprio=True)

    def job(slot: Slot):
        steps = slot.steps
        step = yield steps["create"]
        _check(step, "CREATE")
        nodeid = struct.unpack_from("<Q", step.reply, _OUT.size)[0]
        fh = struct.unpack_from("<Q", step.reply, _OUT.size + abi.ENTRY_OUT.size)[0]
        release = steps["release"]
        struct.pack_into("<Q", release.header, 16, nodeid)
        struct.pack_into("<Q", release.header, _IN.size, fh)
        step = yield release
        _check(step, "RELEASE")
        step = yield steps["unlink"]
        _check(step, "UNLINK")
        forget = steps["forget"]
        struct.pack_into("<Q", forget.header, 16, nodeid)
        yield forget
    return job


def job_readdir(driver: Driver, fx: Fixture):
    for slot in driver.slots:
        driver.add_step(slot, "opendir", Op.OPENDIR, fx.folder,
                        abi.OPEN_IN.pack(os.O_RDONLY | os.O_DIRECTORY, 0), reply=abi.OPEN_OUT.size)
        driver.add_step(slot, "readdir", Op.READDIR, fx.folder,
                        abi.READ_IN.pack(0, 0, 4096, 0, 0, 0, 0), reply=4096)
        driver.add_step(slot, "releasedir", Op.RELEASEDIR, fx.folder,
                        abi.RELEASE_IN.pack(0, 0, 0, 0), reply=0)
    def job(slot: Slot):
        steps = slot.steps
        step = yield steps["opendir"]
        _check(step, "OPENDIR")
        fh = struct.unpack_from("<Q", step.reply, _OUT.size)[0]
        readdir = steps["readdir"]
        body = readdir.reply[_OUT.size:]
        struct.pack_into("<Q", readdir.header, _IN.size, fh)
        offset = 0
        entries = 0
        while True:
            struct.pack_into("<Q", readdir.header, _IN.size + 8, offset)
            step = yield readdir
            _check(step, "READDIR")
            length = step.used_len - _OUT.size
            if length <= 0:
                break
            position = 0
            while position < length:  # fuse_dirent: ino, off, namelen, type, name
                offset, namelen = struct.unpack_from("<QI", body, position + 8)
                position += (24 + namelen + 7) & ~7
                entries += 1
        if entries < DIR_ENTRIES:
            raise RuntimeError(f"READDIR listed {entries} entries")
        releasedir = steps["releasedir"]
        struct.pack_into("<Q", releasedir.header, _IN.size, fh)
        step = yield releasedir
        _check(step, "RELEASEDIR")
    return job


OPERATIONS: dict[str, Callable] = {
    "getattr": job_getattr,
    "lookup": job_lookup,
    "open-read-4k": job_open_read,
    "read-4k": job_sequential(4096, False),
    "read-128k": job_sequential(128 << 10, False),
    "read-1m": job_sequential(1 << 20, False),
    "write-4k": job_sequential(4096, True),
    "write-128k": job_sequential(128 << 10, True),
    "write-1m": job_sequential(1 << 20, True),
    "create": job_create,
    "readdir-2000": job_readdir,
}


# ---- running ----------------------------------------------------------------------------------


def _pin(pid: int, cpu: int) -> None:
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except OSError:
            pass


def run_daemon(kind: str, extra: list[str], ops: list[str], depths: list[int],
               seconds: float, pin: bool) -> dict[tuple[str, int], dict[str, float]]:
    results = {}
    share = Path(tempfile.mkdtemp(prefix="vfsbench-", dir="/var/tmp"))
    try:
        prepare_share(share)
        with running_daemon(daemon_command(kind, extra), share, connect_client=False) as session:
            client = session.connect(queue_size=QUEUE_SIZE, event_idx=True, timeout=30.0)
            try:
                pid = session.process.pid
                fixture = make_fixture(client)
                memory = client.frontend.memory
                # From here on the bench owns the rings: the test client is not used again.
                rings = (Ring(client.frontend.queues[0], memory),
                         Ring(client.frontend.queues[1], memory))
                data_gpas = [memory.alloc((1 << 20) + 4096, align=4096)
                             for _ in range(max(depths))]
                for op in ops:
                    setup = OPERATIONS[op]
                    for depth in depths:
                        if pin:
                            _pin(pid, 1)
                        # Each case lays its chains out anew in memory handed back after it.
                        marks = [region.next_free for region in memory.regions]
                        driver = Driver(memory, rings, data_gpas, depth)
                        job = setup(driver, fixture)
                        driver.run(job, min(0.2, seconds), pid)  # warm-up
                        results[(op, depth)] = driver.run(job, seconds, pid)
                        for region, mark in zip(memory.regions, marks, strict=True):
                            region.next_free = mark
            finally:
                client.close()
    finally:
        shutil.rmtree(share, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--ops", default=",".join(OPERATIONS))
    parser.add_argument("--depths", default="1,16")
    parser.add_argument("--daemons", default="ours,rust")
    parser.add_argument("--ours-args", default="", help="extra arguments for our daemon")
    parser.add_argument("--rust-args", default="", help="extra arguments for the Rust daemon")
    parser.add_argument("--inode-file-handles", default="never",
                        choices=("never", "prefer", "mandatory", "default"),
                        help="inode store of both daemons (default never: the Rust 1.13.2 "
                             "default, while ours defaults to prefer; 'default' leaves each "
                             "daemon its own)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin daemon and bench")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()
    ops = args.ops.split(",")
    for op in ops:
        if op not in OPERATIONS:
            parser.error(f"unknown op {op!r}; known: {', '.join(OPERATIONS)}")
    depths = [int(d) for d in args.depths.split(",")]
    kinds = args.daemons.split(",")
    store = ([] if args.inode_file_handles == "default"
             else [f"--inode-file-handles={args.inode_file_handles}"])
    extra = {kind: store + shlex.split(args.rust_args if kind.startswith("rust")
                                       else args.ours_args)
             for kind in kinds}
    if not args.no_pin:
        os.sched_setaffinity(0, {0})
    samples: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for run in range(args.runs):
        for kind in kinds:
            print(f"run {run + 1}/{args.runs}: {kind}", file=sys.stderr, flush=True)
            for (op, depth), figures in run_daemon(kind, extra[kind], ops, depths, args.seconds,
                                                   not args.no_pin).items():
                samples.setdefault((kind, op, depth), []).append(figures)
    medians = {key: {name: statistics.median(s[name] for s in runs) for name in runs[0]}
               for key, runs in samples.items()}
    print_table(medians, kinds, ops, depths)
    if args.json:
        args.json.write_text(json.dumps({f"{k}|{o}|{d}": v for (k, o, d), v in medians.items()},
                                        indent=1))
    return 0


def print_table(medians, kinds: list[str], ops: list[str], depths: list[int]) -> None:
    """A markdown table: per kind ops/s, p50, daemon CPU per op; each of ours vs ``rust``."""
    names = {kind: kind.replace("ours+", "").replace("--thread-pool-size=", "pool ")
             for kind in kinds}
    compared = [kind for kind in kinds if kind != "rust"] if "rust" in kinds else []
    header = ["op", "QD"]
    header += [f"ops/s {names[k]}" for k in kinds] + [f"p50 µs {names[k]}" for k in kinds]
    header += [f"CPU µs/op {names[k]}" for k in kinds]
    header += [f"CPU {names[k]}/rust" for k in compared]
    header += [f"ops/s {names[k]}/rust" for k in compared]
    header += ["bench CPU µs/op"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for op in ops:
        for depth in depths:
            row = {kind: medians[(kind, op, depth)] for kind in kinds}
            cells = [op, str(depth)]
            cells += [f"{row[k]['ops_per_s']:,.0f}" for k in kinds]
            cells += [f"{row[k]['p50_us']:.1f}" for k in kinds]
            cells += [f"{row[k]['daemon_cpu_us']:.1f}" for k in kinds]
            rust = row.get("rust")
            cells += [f"{row[k]['daemon_cpu_us'] / rust['daemon_cpu_us']:.2f}x" for k in compared]
            cells += [f"{row[k]['ops_per_s'] / rust['ops_per_s']:.2f}x" for k in compared]
            cells.append("/".join(f"{row[k]['bench_cpu_us']:.1f}" for k in kinds))
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
