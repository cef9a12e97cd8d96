"""The ``<socket>.pid`` lock that keeps two daemons off one socket path (as the Rust daemon does).

The lock is an exclusive ``flock`` held for the life of the process on a file that records our
pid.  A second daemon started on the same socket path fails at once with a clear message instead
of unlinking the first one's socket.  A stale file from a dead daemon is simply re-locked.
"""

from __future__ import annotations

import fcntl
import os

from virtiofsd.errors import ConfigError


class PidFile:
    """Holds the lock on ``path`` until :meth:`release` (or process exit)."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{path} is locked: another virtiofsd instance is serving this "
                              "socket path") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Unlock and remove the file; idempotent."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.close()

    def close(self) -> None:
        """Unlock without removing the file (whoever removes it does so by other means, e.g.
        through a descriptor of its folder); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
