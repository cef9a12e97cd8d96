#!/usr/bin/env python3
"""Regenerate the measured seccomp allow-list (core/sandbox/syscalls.py, block MEASURED).

Runs the test suite (arguments go to pytest; default: the whole suite) with our daemon under
``strace -f -ff`` and ``--seccomp log`` (so nothing is killed, and the filter's loading shows
in the trace as the ``seccomp(SECCOMP_SET_MODE_FILTER, ...)`` call).  From each daemon's traces
it keeps the system calls made after that call: by the thread that loaded the filter, and by
every thread started afterwards.  The namespace sandbox's waiting parent, and everything before
the filter (start-up, mounts, pivot_root), are left out.

Each run's command line is recorded too, and what its configuration adds to the base list (the
plugins' ``virtiofsd_seccomp_syscalls``: file handles, xattrs, flock) is taken out of that
run's calls, so that MEASURED is what every configuration needs.  Runs with a
third-party plugin (``--plugin``, the suite's probes) are left out: their extra calls are the
plugin's.  Calls with rules of their own (clone, clone3, unshare) and feature calls made by a
run that did not ask for them are never written: they are printed for review.  The union over
the remaining runs replaces the MEASURED block; the rest of the file is left alone.

    scripts/measure-syscalls.py                       # everything, guests included
    scripts/measure-syscalls.py -m "not guest"        # quicker, without guest boots
    scripts/measure-syscalls.py --print-only tests/core_tests/test_daemon_opcodes.py
    scripts/measure-syscalls.py --keep A -m "not guest"; scripts/measure-syscalls.py --keep B \
        -m guest; scripts/measure-syscalls.py --from A --from B    # in parts, then the union

It runs with the repository's ``.venv`` when there is one, and refuses to measure a
``virtiofsd`` package installed from another checkout.
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
from collections.abc import Iterable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
SYSCALLS_FILE = ROOT / "core" / "sandbox" / "syscalls.py"
BEGIN = "# BEGIN MEASURED"
END = "# END MEASURED"
SYSCALL_LINE = re.compile(r"^(?:\[pid\s+\d+\]\s+)?([a-z_][a-z0-9_]*)\(")
#: The filter's loading; libseccomp's probes before it pass NULL and fail.
FILTER_LOADED = re.compile(r"^seccomp\(SECCOMP_SET_MODE_FILTER, [^,]*, \{.*\) = 0$")
#: The wrapper's record of a run's command line, beside its traces ``run-PID.TID``.
ARGV_PREFIX = "argv-"


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


def runs(trace_dir: pathlib.Path) -> dict[str, tuple[set[str], list[str] | None]]:
    """Each daemon run's calls under the filter and its daemon arguments (``None`` when not
    recorded), by the wrapper's process id."""
    traces: dict[str, list[pathlib.Path]] = {}
    for path in trace_dir.glob("run-*.*"):
        traces.setdefault(path.name.split(".")[0].removeprefix("run-"), []).append(path)
    found = {}
    for pid, files in traces.items():
        argv_file = trace_dir / f"{ARGV_PREFIX}{pid}"
        argv = daemon_arguments(argv_file.read_bytes()) if argv_file.exists() else None
        found[pid] = (daemon_syscalls(files), argv)
    return found


def daemon_arguments(recorded: bytes) -> list[str]:
    """The daemon's own arguments from the wrapper's NUL-separated command line
    (``python -m virtiofsd ARGS...``)."""
    argv = [os.fsdecode(arg) for arg in recorded.split(b"\0") if arg]
    return argv[argv.index("virtiofsd") + 1:] if "virtiofsd" in argv else argv[1:]


def run_configuration(arguments: list[str]) -> Any:
    """The configuration a recorded run had.  Its shared folder is gone by now and does not
    change the system calls, so ``/`` stands in for it."""
    from virtiofsd.cli import apply_compat_options, build_parser, config_from_args

    args = build_parser().parse_args(arguments)
    apply_compat_options(args, args.compat_options)
    args.compat_options = []
    args.shared_dir = "/"
    return config_from_args(args)[0]


def configured_names(config: Any) -> set[str]:
    """What ``config`` adds to the base list, asked of the plugins it selects."""
    from virtiofsd.manager import make_plugin_manager
    from virtiofsd.sandbox.seccomp import configured_syscalls

    return configured_syscalls(config, make_plugin_manager(config))


class Measurement:
    """The base list out of the runs, and what was left out of it, for review."""

    def __init__(self) -> None:
        from virtiofsd.sandbox.syscalls import ARGUMENT_RULES, ERRNO_UNLESS_ALLOWED

        self._ruled = set(ARGUMENT_RULES) | set(ERRNO_UNLESS_ALLOWED)
        self.base: set[str] = set()
        self.ruled: set[str] = set()
        self.configured: set[str] = set()
        self.plugin_runs = 0
        self.unrecorded_runs = 0

    def add(self, calls: set[str], arguments: list[str] | None) -> None:
        if arguments is None:
            self.unrecorded_runs += 1
            self.base |= calls - self._ruled
            self.ruled |= calls & self._ruled
            return
        config = run_configuration(arguments)
        if config.extra_plugins:
            self.plugin_runs += 1
            return
        configured = configured_names(config)
        self.configured |= calls & configured
        rest = calls - configured
        self.base |= rest - self._ruled
        self.ruled |= rest & self._ruled

    def report(self) -> Iterable[str]:
        yield f"configuration-dependent calls seen (left to the plugins' hooks): " \
              f"{' '.join(sorted(self.configured)) or 'none'}"
        yield f"calls with rules of their own, or feature calls of runs without the feature " \
              f"(not written): {' '.join(sorted(self.ruled)) or 'none'}"
        if self.plugin_runs:
            yield f"{self.plugin_runs} runs with a third-party plugin left out"
        if self.unrecorded_runs:
            yield f"{self.unrecorded_runs} runs without a recorded command line counted whole"


def collect(*trace_dirs: pathlib.Path) -> Measurement:
    measurement = Measurement()
    for trace_dir in trace_dirs:
        for calls, arguments in runs(trace_dir).values():
            if calls:
                measurement.add(calls, arguments)
    return measurement


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


def use_the_repository_environment() -> None:
    """Run again under ``.venv``'s Python when there is one, and refuse a ``virtiofsd``
    imported from elsewhere: the suite would measure another checkout's daemon.  (This is why
    the script imports ``virtiofsd`` only inside its functions.)"""
    if (VENV / "bin" / "python").exists() and pathlib.Path(sys.prefix).resolve() != VENV.resolve():
        python = str(VENV / "bin" / "python")
        os.execv(python, [python, __file__, *sys.argv[1:]])
    import virtiofsd

    package = pathlib.Path(virtiofsd.__file__).resolve().parent
    if package != ROOT / "core":
        sys.exit(f"measure-syscalls: virtiofsd is imported from {package}, not from {ROOT}/core; "
                 f"install this checkout (pip install -e {ROOT}) in the Python that runs this")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print-only", action="store_true",
                        help="print the measured names instead of rewriting syscalls.py")
    parser.add_argument("--keep", metavar="DIR", help="keep the traces in DIR")
    parser.add_argument("--from", dest="sources", metavar="DIR", action="append",
                        help="do not run the suite: collect the traces kept (--keep) in DIR "
                             "by earlier runs; repeat it to combine parts of the suite")
    options, pytest_args = parser.parse_known_args()
    use_the_repository_environment()
    if options.sources:
        return write(collect(*map(pathlib.Path, options.sources)), options.print_only)
    trace_dir = pathlib.Path(options.keep or tempfile.mkdtemp(prefix="vfsd-strace-"))
    trace_dir.mkdir(parents=True, exist_ok=True)
    wrapper = trace_dir / "wrap.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\0' \"$@\" > \"{trace_dir}/{ARGV_PREFIX}$$\"\n"
        f'exec strace -f -ff -qq -s 0 -e signal=none -o "{trace_dir}/run-$$" "$@" --seccomp log\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, VIRTIOFSD_DAEMON_WRAPPER=shlex.quote(str(wrapper)))
    pytest = pathlib.Path(sys.executable).parent / "pytest"
    command = [str(pytest)] if pytest.exists() else [sys.executable, "-m", "pytest"]
    tests = subprocess.run([*command, "-q", "-p", "no:cacheprovider",
                            *(pytest_args or ["tests"])], cwd=ROOT, env=env, check=False)
    status = write(collect(trace_dir), options.print_only)
    if tests.returncode:
        print(f"(pytest exited with {tests.returncode}: a test that needs --seccomp kill, or "
              "that reads the daemon's /proc/PID (strace's, under measurement), fails)",
              file=sys.stderr)
    return status


def write(measurement: Measurement, print_only: bool) -> int:
    """Print the base list, or write it to syscalls.py; then what was left out of it."""
    if not measurement.base:
        print("no daemon trace with a loaded filter was found", file=sys.stderr)
        return 1
    if print_only:
        print(" ".join(sorted(measurement.base)))
    else:
        rewrite(measurement.base)
        print(f"{len(measurement.base)} system calls written to "
              f"{SYSCALLS_FILE.relative_to(ROOT)}")
    for line in measurement.report():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
