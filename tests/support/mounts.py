"""Mounting a file system under a test's folder for the length of a test (needs root)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted(point: Path, *mount_options: str) -> Iterator[Path]:
    """``mount MOUNT_OPTIONS... POINT`` until the block ends (then a lazy unmount, so a daemon
    still holding something there cannot make the cleanup fail); skips the test where this
    process may not mount."""
    result = subprocess.run(["mount", *mount_options, str(point)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount {' '.join(mount_options)} at {point}: "
                    f"{result.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)
