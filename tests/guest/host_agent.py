"""Answers, on the host and while a guest runs, the questions the in-guest suites ask the host.

A guest program that needs the host's point of view (did the host see my mmap write? does
the host see my lock? change this file behind my back; how many fds does the daemon hold?)
prints ``HOSTOP <id> <label> <json request>`` on the serial console.  :class:`HostAgent`
follows the console log, carries the request out on the host copy of that label's share and
writes the answer to ``<share>/.hostops/<id>.json``, where the guest reads it through the
very virtio-fs mount under test (the 9p host root caches lookups, so cannot carry it).
The file operations themselves are ``host_operation`` of scripts/conformance.py, so a local
validation run of the suite and a guest run answer identically.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import threading
import time

logger = logging.getLogger(__name__)

SCRIPTS_DIR = pathlib.Path(__file__).resolve().parent / "scripts"
REPLY_FOLDER = ".hostops"
POLL_SECONDS = 0.02


def load_script_module(name: str):
    """Imports a guest script (scripts/NAME.py) as a module, to share its host-side code."""
    spec = importlib.util.spec_from_file_location(f"guest_script_{name}", SCRIPTS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def daemon_fd_count(shared_dir: pathlib.Path) -> int:
    """Open fds of the daemon serving ``shared_dir`` (found by its --shared-dir argument).

    The Rust daemon's namespace sandbox forks, leaving a parent and a child with the same
    command line; the one holding the share's fds is the one with the most.
    """
    wanted = f"--shared-dir\0{shared_dir}\0".encode()
    counts = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "cmdline").read_bytes():
                counts.append(len(os.listdir(entry / "fd")))
        except OSError:
            continue
    if not counts:
        raise FileNotFoundError(f"no daemon process serves {shared_dir}")
    return max(counts)


class HostAgent(threading.Thread):
    """Follows ``console_path`` and answers every HOSTOP line until :meth:`stop`."""

    def __init__(self, console_path: pathlib.Path, shares: dict[str, pathlib.Path]) -> None:
        super().__init__(name="guest-host-agent", daemon=True)
        self.console_path = console_path
        self.shares = shares
        self.answered: list[str] = []
        self._stopping = threading.Event()
        self._operation = load_script_module("conformance").host_operation
        for share in shares.values():
            (share / REPLY_FOLDER).mkdir(exist_ok=True)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        position = 0
        pending = b""
        while not self._stopping.is_set():
            try:
                with self.console_path.open("rb") as console:
                    console.seek(position)
                    data = console.read()
            except FileNotFoundError:
                data = b""
            if data:
                position += len(data)
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._handle(line.decode(errors="replace").strip("\r "))
            else:
                time.sleep(POLL_SECONDS)

    def _handle(self, line: str) -> None:
        fields = line.split(" ", 3)
        if fields[0] != "HOSTOP" or len(fields) != 4:
            return
        request_id, label, body = fields[1:]
        share = self.shares.get(label)
        if share is None:
            logger.error("HOSTOP %s names unknown share %r", request_id, label)
            return
        try:
            request = json.loads(body)
            if request["op"] == "daemon_fds":
                answer = {"ok": True, "count": daemon_fd_count(share)}
            else:
                answer = self._operation(str(share), request)
        except (ValueError, KeyError, OSError) as error:
            answer = {"ok": False, "errno": getattr(error, "errno", None) or 22, "error": str(error)}
        reply = share / REPLY_FOLDER / f"{request_id}.json"
        temporary = reply.with_suffix(".tmp")
        temporary.write_text(json.dumps(answer))
        temporary.rename(reply)
        self.answered.append(request_id)
