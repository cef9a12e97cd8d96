#!/usr/bin/env python3
"""Live-migration rounds: one guest migrated back and forth N times between fresh QEMU 10.0
instances and daemons, with reads, writes and a tree walk in flight at every switch-over.

Reports per mode: rounds completed, stalls (a guest that makes no progress within 30 s after a
switch-over), QEMU's downtime and total time per round, and whether the guest's data checks
held (every read of a held file matched its first checksum, the appended log is gapless).

    python bench/migration_rounds.py --rounds 20 --mode find-paths --mode file-handles
    python bench/migration_rounds.py --daemon rust --extra=--modcaps=+dac_read_search

Needs root, QEMU 10.0 (scripts/qemu-backports.sh) and the guest image cache.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from guest import migration, runner  # after the sys.path insertion above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mode", action="append", choices=["find-paths", "file-handles"])
    parser.add_argument("--daemon", default="ours", choices=["ours", "rust"])
    parser.add_argument("--extra", action="append", default=[],
                        help="an extra daemon option (repeatable)")
    parser.add_argument("--qemu", default=runner.QEMU_BACKPORTS)
    args = parser.parse_args()
    failed = False
    for mode in args.mode or ["find-paths", "file-handles"]:
        logs = pathlib.Path(tempfile.mkdtemp(prefix="vfs-rounds-logs-"))
        report = migration.run_rounds(args.rounds, mode, logs, args.qemu,
                                      daemon=args.daemon, extra_args=tuple(args.extra))
        downtime = report.downtime_ms or [0]
        total = report.total_ms or [0]
        print(f"{args.daemon} {mode}: {report.completed}/{report.rounds} rounds completed, "
              f"{report.stalls} stalls, downtime median {statistics.median(downtime):.0f} ms "
              f"(max {max(downtime)}), total median {statistics.median(total):.0f} ms, "
              f"guest checks {'ok' if report.checks_ok else 'FAILED'}; "
              f"reads {report.values.get('reads')}, writes {report.values.get('writer_lines')}, "
              f"walks {report.values.get('walks')}", flush=True)
        for problem in report.problems:
            print(f"  {problem}", flush=True)
        if report.stalls or report.problems or not report.checks_ok:
            # The daemons' and consoles' logs are the only trace of what went wrong.
            print(f"  logs kept in {logs}", flush=True)
            failed = True
        else:
            shutil.rmtree(logs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
