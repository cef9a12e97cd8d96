#!/usr/bin/env python3
"""CPU per request of the daemon's request path in-process: ring walk, router, hook, reply,
used ring; no vhost-user socket, no eventfds, no other process.

    python bench/request_path_bench.py [--ops getattr,lookup,read-4k,write-4k] [--queue native|python]
        [--path answer|chain] [--number 20000] [--repeat 5] [--inode-file-handles never]

A guest-like driver (tests/core_tests/ring_driver.py) lays out chains in a bytearray the way a
Linux guest does (the request in one readable buffer, the reply's header and argument in two
writable ones) and publishes them; each iteration takes one chain from the queue the daemon
would use and serves it as the worker does: with ``--path answer`` (the default, what the
daemon does serving inline on the compiled queue) the router answers from the walk's copy and
the chain is completed in one compiled call; with ``--path chain`` it is made into a chain,
handed to ``handle_chain`` and its used element pushed (the thread pool's way).  Time is the
calling thread's CPU time (user and system), minimum of ``--repeat`` runs, in µs per request.

``socket_bench.py`` measures the whole daemon, with the notification system calls and the
wake-ups between two processes; this one isolates what the request path itself costs, so a
change to it can be measured to a tenth of a microsecond on a busy machine.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from core_tests.ring_driver import Driver  # noqa: E402  (after the sys.path insertion)
from virtiofsd.config import CacheMode, Config, Sandbox  # noqa: E402
from virtiofsd.fuse import abi  # noqa: E402
from virtiofsd.fuse.router import FuseRouter  # noqa: E402
from virtiofsd.manager import make_plugin_manager  # noqa: E402
from virtiofsd.virtio.native_queue import NATIVE_AVAILABLE, NativeSplitQueue  # noqa: E402
from virtiofsd.virtio.split_queue import SplitQueue  # noqa: E402
from virtiofsd_plugins.inode_handles import mandatory, never, prefer  # noqa: E402
from virtiofsd_plugins.passthrough import plugin  # noqa: E402

STORES = {"never": never, "prefer": prefer, "mandatory": mandatory}
QUEUE_SIZE = 256
#: Chains laid out at once (three descriptors each).
CHAINS = 64
IN_HEADER = struct.Struct("<IIQQIIII")
OUT_HEADER_SIZE = 16
#: What Linux 6.1 asks for in INIT (the flags that change the daemon's work).
INIT_FLAGS = int(abi.InitFlag.ASYNC_READ | abi.InitFlag.SUBMOUNTS | abi.InitFlag.DO_READDIRPLUS
                 | abi.InitFlag.READDIRPLUS_AUTO | abi.InitFlag.PARALLEL_DIROPS)


def request(opcode: int, nodeid: int, args: bytes, unique: int = 2) -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(args), opcode, unique, nodeid, 0, 0, 1, 0) + args


class RequestPath:
    """One router over a passthrough file system, and a driver publishing one kind of chain."""

    def __init__(self, folder: Path, store: str, queue: str) -> None:
        (folder / "file").write_bytes(b"hello")
        self.pm = make_plugin_manager(load_entry_points=False, plugins=[plugin, STORES[store]])
        self.config = Config(shared_dir=str(folder), sandbox=Sandbox.NONE, cache=CacheMode.AUTO,
                             inode_file_handles=store)
        self.pm.hook.virtiofsd_configure(config=self.config, pm=self.pm)
        self.router = FuseRouter(self.pm, self.config)
        init = struct.pack("<IIIIII", 7, 38, 128 * 1024, INIT_FLAGS, 0, 0) + bytes(40)
        self.call(request(abi.Opcode.INIT, 0, init), 256)
        reply = self.call(request(abi.Opcode.LOOKUP, abi.ROOT_ID, b"file\0"), 256)
        (self.file,) = struct.unpack_from("<Q", reply, OUT_HEADER_SIZE)
        reply = self.call(request(abi.Opcode.OPEN, self.file, struct.pack("<II", 2, 0)), 256)
        (self.fh,) = struct.unpack_from("<Q", reply, OUT_HEADER_SIZE)
        self.driver = Driver(QUEUE_SIZE)
        if queue == "native":
            if not NATIVE_AVAILABLE:
                raise SystemExit("the compiled queue is not built (pip install -e .)")
            self.driver.queue_class = NativeSplitQueue
        else:
            self.driver.queue_class = SplitQueue
        self.queue = self.driver.queue()
        if isinstance(self.queue, NativeSplitQueue):
            self.queue.may_copy = self.router.may_copy

    def call(self, data: bytes, room: int) -> bytes:
        out = bytearray(room)
        written = self.router.handle_chain(1, [memoryview(data)], [memoryview(out)])
        return bytes(out[:written])

    def lay_out(self, data: bytes, reply_size: int) -> None:
        """CHAINS chains of ``data``, each replying into a header buffer and an argument
        buffer, as Linux's virtio-fs driver lays them out.  The chains share one request and
        one pair of reply buffers (they are served one after the other), so 64 chains of 4 KiB
        WRITEs fit the driver's memory."""
        driver = self.driver
        driver.next_data = 0x110000
        request_at, request_length = driver.alloc(data)
        header_at, header_length = driver.alloc(OUT_HEADER_SIZE)
        reply_at, reply_length = driver.alloc(reply_size)
        for chain in range(CHAINS):
            head = 3 * chain
            driver.desc(head, request_at, request_length, 1, head + 1)
            driver.desc(head + 1, header_at, header_length, 1 | 2, head + 2)
            driver.desc(head + 2, reply_at, reply_length, 2)

    def run(self, number: int) -> float:
        """CPU seconds per request over ``number`` requests served as chains: pop,
        ``handle_chain``, push (the thread pool's and the Python queue's way)."""
        queue, handle = self.queue, self.router.handle_chain

        def serve() -> None:
            chain = queue.pop()
            queue.push_used(chain.head, handle(1, chain.readable, chain.writable))

        return self._timed(number, serve)

    def run_answered(self, number: int) -> float:
        """CPU seconds per request over ``number`` requests served the way the compiled worker
        serves them inline: walk, ``answer`` from the copy, one compiled completion
        (``handle_chain`` for what answer declines)."""
        queue, router = self.queue, self.router
        assert isinstance(queue, NativeSplitQueue)

        def serve() -> None:
            walked = queue.next_walk(-1, -1, False)
            answered = router.answer(1, *queue.request_of(walked))
            if type(answered) is tuple:
                queue.complete(walked, *answered)
            else:
                chain = queue.chain_of(walked)
                queue.push_used(chain.head, router.handle_chain(1, chain.readable,
                                                                chain.writable))

        return self._timed(number, serve)

    def _timed(self, number: int, serve: Callable[[], None]) -> float:
        """The calling thread's CPU seconds per ``serve()``, over batches of CHAINS published
        chains (publishing is not counted)."""
        driver = self.driver
        heads = [3 * chain for chain in range(CHAINS)]
        clock = time.thread_time
        spent = 0.0
        done = 0
        while done < number:
            driver.publish(*heads)
            start = clock()
            for _ in heads:
                serve()
            spent += clock() - start
            done += len(heads)
        return spent / done

    def close(self) -> None:
        self.pm.hook.virtiofsd_unconfigure(config=self.config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="getattr,lookup,read-4k,write-4k")
    parser.add_argument("--queue", choices=("native", "python"), default="native")
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--inode-file-handles", choices=sorted(STORES), default="never")
    parser.add_argument("--dir", default=None, help="where the shared folder is made")
    parser.add_argument("--path", choices=("answer", "chain"), default="answer",
                        help="answer: as the daemon serves inline on the compiled queue (the "
                        "router's answer, one compiled completion); chain: every request as a "
                        "chain through handle_chain (the pool's and the Python queue's way)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        bench = RequestPath(Path(folder), args.inode_file_handles, args.queue)
        try:
            operations = {
                "getattr": (request(abi.Opcode.GETATTR, bench.file, bytes(16)), 104),
                "lookup": (request(abi.Opcode.LOOKUP, abi.ROOT_ID, b"file\0"), 128),
                "read-4k": (request(abi.Opcode.READ, bench.file,
                                    abi.READ_IN.pack(bench.fh, 0, 4096, 0, 0, 0, 0)), 4096),
                "write-4k": (request(abi.Opcode.WRITE, bench.file,
                                     abi.WRITE_IN.pack(bench.fh, 0, 4096, 0, 0, 0, 0)
                                     + bytes(4096)), 16),
            }
            if args.path == "answer" and args.queue != "native":
                parser.error("--path answer needs the native queue")
            run = bench.run_answered if args.path == "answer" else bench.run
            print(f"µs per request (min of {args.repeat} x {args.number}), {args.queue} queue, "
                  f"{args.path} path, --inode-file-handles={args.inode_file_handles}")
            for name in args.ops.split(","):
                data, reply_size = operations[name]
                bench.lay_out(data, reply_size)
                run(1000)
                best = min(run(args.number) for _ in range(args.repeat))
                print(f"{name:<12} {best * 1e6:8.2f}")
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
