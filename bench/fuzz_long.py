"""The long fuzzing run of the FUSE decoder and the split-ring walker.

    python bench/fuzz_long.py [--inputs 1000000] [--seed 1] [--ring-share 0.3]
                              [--backend memfs|passthrough --share DIR]

With ``--backend passthrough`` the requests reach the real passthrough file system over DIR,
whose content is deleted and recreated as the run goes; make it a small tmpfs, as root::

    mkdir -p /tmp/fuzzshare && mount -t tmpfs -o size=64m,nr_inodes=20000 tmpfs /tmp/fuzzshare

Draws inputs from the mutators of ``tests/fuzz/targets.py`` with a seeded ``random.Random``
(so a crash is reproduced by its seed and input number) and feeds them straight to the targets:
no sockets, no threads.  A fraction ``--ring-share`` of the inputs are random ring layouts (each
walked by the Python queue and, when it is built, by the compiled one, which must agree), the
rest FUSE requests.  Every crash is printed with what reproduces it; the run goes on, and the
exit status is 1 when anything crashed.  The figures to report are the last line.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import random
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fuzz.targets import FuseTarget, RingTarget, mutate_request  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ring-share", type=float, default=0.3)
    parser.add_argument("--report-every", type=int, default=100_000)
    parser.add_argument("--backend", choices=("memfs", "passthrough"), default="memfs")
    parser.add_argument("--share", help="the passthrough backend's folder (a small tmpfs)")
    args = parser.parse_args()
    # The router logs every malformed request (rate-limited); only tracebacks matter here,
    # and the target catches those itself.
    logging.getLogger("virtiofsd").setLevel(logging.ERROR)
    logging.getLogger("virtiofsd").propagate = False

    rng = random.Random(args.seed)
    fuse, ring = FuseTarget(args.backend, args.share), RingTarget()
    crashes: dict[str, int] = {}
    counts = {"fuse": 0, "ring": 0}
    start = time.monotonic()
    for number in range(1, args.inputs + 1):
        state = rng.getstate()
        kind = "ring" if rng.random() < args.ring_share else "fuse"
        counts[kind] += 1
        try:
            if kind == "ring":
                ring.compare(ring.random_layout(rng))
            else:
                fuse.feed(*mutate_request(rng))
        except Exception as exc:  # every escaping exception is a finding, recorded and counted
            key = f"{kind}: {type(exc).__name__}: {str(exc)[:120]}"
            if key not in crashes:
                print(f"CRASH at input {number} (seed {args.seed}, state hash "
                      f"{hash(state) & 0xFFFFFFFF:#x}): {key}", flush=True)
                traceback.print_exc()
            crashes[key] = crashes.get(key, 0) + 1
        if number % args.report_every == 0:
            rate = number / (time.monotonic() - start)
            print(f"{number} inputs, {sum(crashes.values())} crashing, {rate:.0f}/s", flush=True)
    fuse.close()
    elapsed = time.monotonic() - start
    print(f"done ({args.backend}): {args.inputs} inputs ({counts['fuse']} FUSE requests, "
          f"{counts['ring']} ring layouts) in {elapsed:.0f} s, {sum(crashes.values())} crashing inputs, "
          f"{len(crashes)} distinct crashes")
    for key, count in sorted(crashes.items()):
        print(f"  {count:8d}  {key}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
