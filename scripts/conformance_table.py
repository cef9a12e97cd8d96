#!/usr/bin/env python3
"""Writes docs/conformance.md's result table from the console logs of two conformance boots.

    scripts/conformance_table.py --ours BASETEMP_OURS/.../logs/console.log \
        --rust BASETEMP_RUST/.../logs/console.log > table.md

(the logs are kept under pytest's --basetemp: conformance-<daemon>0/logs/console.log).
Each row is one check, with the result per configuration that runs it (auto / never /
writeback / always) for both daemons and, where they differ or both fail for a known reason,
the reason recorded in tests/guest/test_conformance.py.  Then the NOTE lines of the ``always``
configuration, whose coherence is recorded rather than judged.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.guest import runner  # noqa: E402
from tests.guest.test_conformance import (  # noqa: E402
    CONFIGURATIONS, CONFORMANCE_CHECKS, KNOWN_LIMITATIONS, OURS_DIFFERENCES, RUST_DIFFERENCES, STRESS_CHECKS,
    STRESS_LABEL)


def results(console: pathlib.Path) -> dict[str, runner.GuestCheck]:
    checks, _ = runner.parse_console(console.read_text(errors="replace"))
    return {check.name: check for check in checks}


def cell(found: dict[str, runner.GuestCheck], labels: list[str], name: str) -> str:
    parts = []
    for label in labels:
        check = found.get(f"{label}.{name}")
        if check is None:
            parts.append(f"{label}: missing")
        elif not check.ok:
            detail = check.detail.replace("|", "\\|")[:90]
            parts.append(f"{label}: **fail** ({detail})")
    return "ok" if not parts else "<br>".join(parts)


def difference(differences: dict[str, str], found: dict[str, runner.GuestCheck],
               labels: list[str], name: str) -> str:
    """The recorded reason a daemon fails check ``name``: keyed by the bare name (every
    configuration) or by ``label.name`` (one configuration, given only where it failed)."""
    failed = [label for label in labels
              if (check := found.get(f"{label}.{name}")) is not None and not check.ok]
    if not failed:
        return ""
    if name in differences:
        return differences[name]
    by_reason: dict[str, list[str]] = {}
    for label in failed:
        if (reason := differences.get(f"{label}.{name}")) is not None:
            by_reason.setdefault(reason, []).append(label)
    return "; ".join(f"{', '.join(labels)}: {reason}" for reason, labels in by_reason.items())


def table(ours: dict, rust: dict) -> str:
    rows = ["| check | Rust virtiofsd | ours | why they differ |", "|---|---|---|---|"]
    for name, row_labels in [(name, [configuration.label for configuration in CONFIGURATIONS
                                     if name in configuration.checks])
                             for name in CONFORMANCE_CHECKS] + \
                            [(name, [STRESS_LABEL]) for name in STRESS_CHECKS]:
        rust_cell = cell(rust, row_labels, name)
        ours_cell = cell(ours, row_labels, name)
        why = ""
        if rust_cell != ours_cell:
            reasons = [f"{who}: {reason}" for who, differences, found in
                       (("Rust", RUST_DIFFERENCES, rust), ("ours", OURS_DIFFERENCES, ours))
                       if (reason := difference(differences, found, row_labels, name))]
            why = "<br>".join(reasons)
        limitations = [reason for key, reason in KNOWN_LIMITATIONS.items() if key.endswith(f".{name}")]
        if limitations and "fail" in rust_cell + ours_cell:
            why = why or f"both: {limitations[0]}"
        rows.append(f"| {name} | {rust_cell} | {ours_cell} | {why} |")
    return "\n".join(rows) + "\n"


def notes(console: pathlib.Path, label: str) -> list[str]:
    """The NOTE lines of one configuration (what a check recorded without judging it)."""
    return [line.strip() for line in console.read_text(errors="replace").splitlines()
            if line.startswith(f"NOTE {label}.")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=pathlib.Path, required=True, help="console.log of our boot")
    parser.add_argument("--rust", type=pathlib.Path, required=True, help="console.log of the Rust boot")
    parser.add_argument("--notes", metavar="LABEL", default="always",
                        help="also list this configuration's NOTE lines, per daemon (default "
                             "always, whose coherence is recorded, not judged; '' for none)")
    options = parser.parse_args()
    sys.stdout.write(table(results(options.ours), results(options.rust)))
    if options.notes:
        for daemon, console in (("Rust virtiofsd", options.rust), ("ours", options.ours)):
            sys.stdout.write(f"\n{daemon}:\n\n")
            sys.stdout.write("".join(f"    {line}\n" for line in notes(console, options.notes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
