#!/usr/bin/env python3
"""Regenerate the measured seccomp allow-list (core/sandbox/syscalls.py, block MEASURED).

Runs the test suite (arguments go to pytest; default: the whole suite) with our daemon under
``strace -f -ff`` and ``--seccomp log`` (so nothing is killed, and the filter's loading shows
in the trace as the ``seccomp(SECCOMP_SET_MODE_FILTER, ...)`` call).  From each daemon's traces
it keeps the system calls made after that call: by the thread that loaded the filter, and by
every thread started afterwards.  The namespace sandbox's waiting parent, and everything before
the filter (start-up, mounts, pivot_root), are left out.  The union over every daemon run
replaces the MEASURED block; the rest of the file is left alone.

    scripts/measure-syscalls.py                       # everything, guests included
    scripts/measure-syscalls.py -m "not guest"        # quicker, without guest boots
    scripts/measure-syscalls.py --print-only tests/core_tests/test_daemon_opcodes.py
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSCALLS_FILE = ROOT / "core" / "sandbox" / "syscalls.py"
BEGIN = "# BEGIN MEASURED"
END = "# END MEASURED"
SYSCALL_LINE = re.compile(r"^(?:\[pid\s+\d+\]\s+)?([a-z_][a-z0-9_]*)\(")
#: The filter's loading; libseccomp's probes before it pass NULL and fail.
FILTER_LOADED = re.compile(r"^seccomp\(SECCOMP_SET_MODE_FILTER, [^,]*, \{.*\) = 0$")


def daemon_syscalls(trace_files: list[pathlib.Path]) -> set[str]:
    """The calls made under the filter by one daemon run (its per-thread trace files)."""
    names: set[str] = set()
    for path in trace_files:
        lines = path.read_text(errors="replace").splitlines()
        loaded = next((i for i, line in enumerate(lines) if FILTER_LOADED.match(line)), None)
        if loaded is not None:
            counted = lines[loaded + 1:]
        elif any(line.startswith("execve(") for line in lines):
            continue  # a process that never loaded a filter: the waiting parent, a helper
        else:
            counted = lines  # a thread started after the filter was loaded
        for line in counted:
            match = SYSCALL_LINE.match(line)
            if match:
                names.add(match.group(1))
    return names


def collect(trace_dir: pathlib.Path) -> set[str]:
    runs: dict[str, list[pathlib.Path]] = {}
    for path in trace_dir.glob("run-*.*"):
        runs.setdefault(path.name.split(".")[0], []).append(path)
    names: set[str] = set()
    for files in runs.values():
        names |= daemon_syscalls(files)
    return names


def rewrite(names: set[str]) -> None:
    text = SYSCALLS_FILE.read_text()
    start = text.index(BEGIN)
    end = text.index(END)
    header = text[start:text.index("\n", start) + 1]
    body = "MEASURED = frozenset({\n"
    line = "   "
    for name in sorted(names):
        item = f' "{name}",'
        if len(line) + len(item) > 99:
            body += line + "\n"
            line = "   "
        line += item
    body += line + "\n})\n"
    SYSCALLS_FILE.write_text(text[:start] + header + body + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print-only", action="store_true",
                        help="print the measured names instead of rewriting syscalls.py")
    parser.add_argument("--keep", metavar="DIR", help="keep the traces in DIR")
    options, pytest_args = parser.parse_known_args()
    trace_dir = pathlib.Path(options.keep or tempfile.mkdtemp(prefix="vfsd-strace-"))
    trace_dir.mkdir(parents=True, exist_ok=True)
    wrapper = trace_dir / "wrap.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec strace -f -ff -qq -s 0 -e signal=none -o "{trace_dir}/run-$$" "$@" --seccomp log\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, VIRTIOFSD_DAEMON_WRAPPER=shlex.quote(str(wrapper)))
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *(pytest_args or ["tests"])], cwd=ROOT, env=env, check=False)
    names = collect(trace_dir)
    if not names:
        print("no daemon trace with a loaded filter was found", file=sys.stderr)
        return 1
    if options.print_only:
        print(" ".join(sorted(names)))
    else:
        rewrite(names)
        print(f"{len(names)} system calls written to {SYSCALLS_FILE.relative_to(ROOT)}")
    if tests.returncode:
        print(f"(pytest exited with {tests.returncode}: a test that needs --seccomp kill fails "
              "under measurement, since it runs with --seccomp log)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
