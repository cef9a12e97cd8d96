"""What a daemon process holds open, seen from the host through /proc."""

from __future__ import annotations

import os
from pathlib import Path


def path_fds(pid: int) -> int:
    """How many O_PATH descriptors process ``pid`` holds (the fd-backed inodes)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except FileNotFoundError:
            continue
        flags = int(info.split("flags:")[1].split()[0], 8)
        count += bool(flags & os.O_PATH)
    return count
