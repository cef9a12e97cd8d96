"""Start-up time and idle memory of our daemon and the Rust virtiofsd.

    .venv/bin/python bench/footprint.py [--runs 7] [--daemons ours,rust]

For each start: the wall time from spawning the daemon to its socket appearing, the CPU time
(user + system, from /proc/PID/stat) it had used by then, which a busy machine does not inflate,
and the resident memory (VmRSS) once it has sat idle, listening, for half a second.  Medians.

Our figures depend on Python finding compiled bytecode: an installed package has it; a checkout
run with PYTHONDONTWRITEBYTECODE=1 compiles every module at every start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RUST = os.environ.get("VIRTIOFSD_RUST_REFERENCE", "/var/tmp/virtiofsd-reference/rust-virtiofsd")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(program: list[str], share: str) -> tuple[float, float, float]:
    workdir = tempfile.mkdtemp(prefix="vfs-footprint-")
    sock = os.path.join(workdir, "vhost.sock")
    try:
        start = time.perf_counter()
        process = subprocess.Popen([*program, "--socket-path", sock, "--shared-dir", share,
                                    "--sandbox", "none"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not os.path.exists(sock):
                if process.poll() is not None or time.perf_counter() - start > 30:
                    raise RuntimeError(f"{program[0]} did not listen")
                time.sleep(0.001)
            ready = time.perf_counter() - start
            cpu = _cpu_seconds(process.pid)
            time.sleep(0.5)
            return ready, cpu, _rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--daemons", default="ours,rust")
    args = parser.parse_args()
    programs = {"ours": [sys.executable, "-m", "virtiofsd"], "rust": [RUST]}
    share = tempfile.mkdtemp(prefix="vfs-footprint-share-")
    samples: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for _ in range(args.runs):
            for kind in args.daemons.split(","):
                samples.setdefault(kind, []).append(measure(programs[kind], share))
    finally:
        shutil.rmtree(share, ignore_errors=True)
    print("| daemon | socket ready (wall) | CPU until ready | idle RSS |")
    print("|---|---|---|---|")
    for kind, runs in samples.items():
        ready, cpu, rss = (statistics.median(column) for column in zip(*runs, strict=True))
        print(f"| {kind} | {ready * 1000:.0f} ms | {cpu * 1000:.0f} ms | {rss:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
