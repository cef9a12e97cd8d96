"""Python CPU per FUSE operation inside the daemon, from the hook call inward.

    .venv/bin/python bench/hook_bench.py [--inode-file-handles never] [--ops getattr,lookup]
        [--number 2000] [--repeat 7] [--cache auto] [--translate-uid map:0:0:1] [--dir /dev/shm]

No daemon, no rings: the bench builds the plugin manager the daemon builds (the passthrough file
system and the chosen inode store over a fresh folder), resolves each hook the way the router
does (:func:`virtiofsd.manager.resolve_hook`), and calls it with keyword arguments followed by
the reply's ``encode()``, which is exactly what the router does between decoding a request and
writing its reply.  What it leaves out (the ring walk, header decode, reply write) costs about
the same for each of these opcodes and is measured by ``socket_bench.py``.

Each operation is timed with ``timeit`` over ``--number`` iterations, ``--repeat`` times, in CPU
time of the calling thread (user and system, as the daemon's CPU per request in
``socket_bench.py``): time spent waiting for a CPU that others hold does not count.  The minimum
is printed in µs per operation, the least disturbed figure on a shared machine.

Operations (one iteration each):

* ``getattr``: GETATTR of a file;
* ``lookup``: LOOKUP of a file the guest already holds (the count grows; no new inode);
* ``lookup+forget``: LOOKUP of a file the guest does not hold, then FORGET of it (a new inode
  each time, as a guest walking a tree without caching);
* ``batch-forget``: LOOKUP of a new inode then BATCH_FORGET of it (one pair);
* ``open+release``: OPEN read-only, RELEASE;
* ``flush``: FLUSH of an open handle;
* ``create+release+unlink+forget``: the sequence a guest's ``creat(); close(); unlink()`` sends.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtiofsd.config import CacheMode, Config, Sandbox
from virtiofsd.fuse import abi
from virtiofsd.fuse.context import Request
from virtiofsd.manager import make_plugin_manager, resolve_hook
from virtiofsd_plugins.inode_handles import mandatory, never, prefer
from virtiofsd_plugins.passthrough import plugin

ROOT = abi.ROOT_ID
STORES = {"never": never, "prefer": prefer, "mandatory": mandatory}
#: What a Linux guest negotiates that changes the passthrough's work: submount detection runs.
SESSION_FLAGS = int(abi.InitFlag.SUBMOUNTS)


def _reply(result: Any) -> Any:
    """The router's encoding step: an object's ``encode()``, bytes as they are."""
    encode = getattr(result, "encode", None)
    return encode() if encode is not None else result


class Bench:
    """One configured passthrough file system and a builder per measured operation."""

    def __init__(self, folder: Path, store: str, cache: str, translate_uid: list[str]) -> None:
        (folder / "file").write_bytes(b"hello")
        self.pm = make_plugin_manager(load_entry_points=False, plugins=[plugin, STORES[store]])
        self.config = Config(shared_dir=str(folder), sandbox=Sandbox.NONE,
                             cache=CacheMode(cache), inode_file_handles=store,
                             translate_uid=tuple(translate_uid))
        self.pm.hook.virtiofsd_configure(config=self.config, pm=self.pm)
        self.req = Request(unique=1, opcode=0, nodeid=0, uid=0, gid=0, pid=1,
                           session=types.SimpleNamespace(flags=SESSION_FLAGS))
        self.hook = {name: resolve_hook(self.pm, f"virtiofsd_fuse_{name}")
                     for name in ("lookup", "forget", "batch_forget", "getattr", "open",
                                  "release", "flush", "create", "unlink")}
        # The guest holds the file from here on: "lookup" and "getattr" find it known.
        self.file = self.hook["lookup"](req=self.req, parent=ROOT, name=b"file").nodeid

    def close(self) -> None:
        self.pm.hook.virtiofsd_unconfigure(config=self.config)

    def op_getattr(self) -> Callable[[], None]:
        getattr_, req, nodeid = self.hook["getattr"], self.req, self.file

        def run() -> None:
            _reply(getattr_(req=req, nodeid=nodeid, fh=None))
        return run

    def op_lookup(self) -> Callable[[], None]:
        lookup, req = self.hook["lookup"], self.req

        def run() -> None:
            _reply(lookup(req=req, parent=ROOT, name=b"file"))
        return run

    def op_lookup_forget(self) -> Callable[[], None]:
        lookup, forget, req = self.hook["lookup"], self.hook["forget"], self.req
        (Path(self.config.shared_dir) / "other").write_bytes(b"")

        def run() -> None:
            entry = lookup(req=req, parent=ROOT, name=b"other")
            _reply(entry)
            forget(req=req, nodeid=entry.nodeid, nlookup=1)
        return run

    def op_batch_forget(self) -> Callable[[], None]:
        lookup, batch_forget, req = self.hook["lookup"], self.hook["batch_forget"], self.req
        (Path(self.config.shared_dir) / "other").write_bytes(b"")

        def run() -> None:
            entry = lookup(req=req, parent=ROOT, name=b"other")
            _reply(entry)
            batch_forget(req=req, forgets=[(entry.nodeid, 1)])
        return run

    def op_open_release(self) -> Callable[[], None]:
        open_, release, req, nodeid = self.hook["open"], self.hook["release"], self.req, self.file

        def run() -> None:
            opened = open_(req=req, nodeid=nodeid, flags=os.O_RDONLY, open_flags=0)
            _reply(opened)
            _reply(release(req=req, nodeid=nodeid, fh=opened.fh, flags=os.O_RDONLY,
                           release_flags=0, lock_owner=0))
        return run

    def op_flush(self) -> Callable[[], None]:
        flush, req, nodeid = self.hook["flush"], self.req, self.file
        fh = self.hook["open"](req=req, nodeid=nodeid, flags=os.O_RDONLY, open_flags=0).fh

        def run() -> None:
            _reply(flush(req=req, nodeid=nodeid, fh=fh, lock_owner=0))
        return run

    def op_create_release_unlink_forget(self) -> Callable[[], None]:
        create, release, unlink, forget = (self.hook[name] for name in
                                           ("create", "release", "unlink", "forget"))
        req = self.req

        def run() -> None:
            created = create(req=req, parent=ROOT, name=b"new", mode=0o100644,
                             flags=os.O_RDWR, umask=0, open_flags=0)
            _reply(created)
            nodeid = created.entry.nodeid
            _reply(release(req=req, nodeid=nodeid, fh=created.open.fh, flags=os.O_RDWR,
                           release_flags=0, lock_owner=0))
            _reply(unlink(req=req, parent=ROOT, name=b"new"))
            forget(req=req, nodeid=nodeid, nlookup=1)
        return run


OPS = {
    "getattr": Bench.op_getattr,
    "lookup": Bench.op_lookup,
    "lookup+forget": Bench.op_lookup_forget,
    "batch-forget": Bench.op_batch_forget,
    "open+release": Bench.op_open_release,
    "flush": Bench.op_flush,
    "create+release+unlink+forget": Bench.op_create_release_unlink_forget,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inode-file-handles", choices=sorted(STORES), default="never")
    parser.add_argument("--ops", default=",".join(OPS),
                        help="comma-separated, of: " + ", ".join(OPS))
    parser.add_argument("--number", type=int, default=2000, help="iterations per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings; the minimum is shown")
    parser.add_argument("--cache", choices=[mode.value for mode in CacheMode], default="auto")
    parser.add_argument("--translate-uid", action="append", default=[],
                        help="a uid translation rule, as the daemon's option")
    parser.add_argument("--dir", default=None, help="where to make the shared folder")
    args = parser.parse_args(argv)
    names = args.ops.split(",")
    unknown = [name for name in names if name not in OPS]
    if unknown:
        parser.error(f"unknown operations: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="hook-bench-", dir=args.dir) as folder:
        bench = Bench(Path(folder), args.inode_file_handles, args.cache, args.translate_uid)
        try:
            print(f"µs per operation (min of {args.repeat} x {args.number}), "
                  f"--inode-file-handles={args.inode_file_handles}")
            for name in names:
                run = OPS[name](bench)
                best = min(timeit.repeat(run, timer=time.thread_time, number=args.number,
                                         repeat=args.repeat))
                print(f"{name:32} {best / args.number * 1e6:8.2f}")
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
