"""The issue's descriptor-budget measurement: a guest walks a tree of 200,000 files with
``find`` + ``stat`` under ``--rlimit-nofile 4096``; prints, per daemon and inode store, the walk
time, how many lookups met ENFILE/EMFILE, and the daemon's peak descriptor count.

    python bench/fd_budget.py [--files 200000] [--rlimit 4096]
        [--runs ours-prefer,ours-never,rust-prefer,rust-never]

Each run is one guest boot (the guest script is tests/guest/scripts/inode_stores.sh without
its submount and unlink parts).  The descriptor count is sampled from /proc/PID/fd every 50 ms,
so a short peak may be missed by a few.  CI runs the same property at a smaller size
(tests/guest/test_inode_stores.py).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from guest import runner  # after the sys.path insertion above
from guest.test_inode_stores import FdSampler, make_tree

FILES_PER_DIR = 1000


def run(daemon: str, strategy: str, files: int, rlimit: int, root: pathlib.Path) -> dict:
    share = root / f"{daemon}-{strategy}" / "share"
    share.mkdir(parents=True)
    make_tree(share, max(1, files // FILES_PER_DIR), min(files, FILES_PER_DIR))
    sampler = FdSampler(share)
    sampler.start()
    try:
        result = runner.boot(daemon, share,
                             runner.guest_script("inode_stores.sh",
                                                 prelude="SUBMOUNTS=0\nUNLINK=0\n"),
                             daemon_args=[f"--inode-file-handles={strategy}",
                                          "--rlimit-nofile", str(rlimit)],
                             timeout=3600, log_dir=share.parent / "logs")
    finally:
        sampler.stopped.set()
        sampler.join()
    values = result.values
    return {
        "run": f"{daemon}-{strategy}",
        "walk_s": values.get("walk_seconds", "?"),
        "stats": values.get("walk_stats", "?"),
        "enfile": values.get("walk_enfile", "?"),
        "other_errors": values.get("walk_other_errors", "?"),
        "peak_fds": sampler.peak,
        "serving_after": all(check.ok for check in result.checks),
        "boot_s": round(result.seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--rlimit", type=int, default=4096)
    parser.add_argument("--runs", default="ours-prefer,ours-never,rust-prefer,rust-never")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fd-budget-", dir="/var/tmp") as directory:
        rows = []
        for name in args.runs.split(","):
            daemon, strategy = name.split("-", 1)
            rows.append(run(daemon, strategy, args.files, args.rlimit, pathlib.Path(directory)))
            print(rows[-1], flush=True)
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[column]) for column in columns))


if __name__ == "__main__":
    main()
