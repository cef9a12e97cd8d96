"""The device-state transfer of vhost-user (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE).

QEMU hands over one end of a pipe and then waits for our reply before it touches the other
end, so the transfer cannot happen inside the request handler: a state larger than the pipe's
buffer would block us forever.  :meth:`DeviceStateTransfer.start` therefore only starts a
thread: on the source it writes the saved state and closes the pipe (EOF ends the state), on
the destination it reads to EOF and loads what it read.  CHECK_DEVICE_STATE comes after QEMU
has seen our EOF (or sent its own) and joins that thread: :meth:`DeviceStateTransfer.check`
reports whether saving or loading succeeded.  Failures are logged with their cause here, since
the front-end only learns "failed".

A ring that starts after a successful save means the migration failed and the guest carries
on here (QEMU restarts the source's device): :meth:`DeviceStateTransfer.ring_starting` then calls
``resumed`` once, so the file system takes back what the save let go of.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

__all__ = ["DeviceStateTransfer", "SAVE", "LOAD"]

log = logging.getLogger(__name__)

SAVE = 0
LOAD = 1
_CHUNK = 1 << 16


class DeviceStateTransfer:
    """One connection's state transfers; ``save()`` returns the bytes, ``load(data)`` applies
    them (both run on the transfer thread while the device is stopped)."""

    def __init__(self, save: Callable[[], bytes], load: Callable[[bytes], None],
                 resumed: Callable[[], None] = lambda: None) -> None:
        self._save = save
        self._load = load
        self._resumed = resumed
        self._saved = False
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self, direction: int, fd: int) -> None:
        """Take ``fd`` and start saving into it or loading from it."""
        if self._thread is not None:
            self._thread.join()
        self._error = None
        target = self._write_state if direction == SAVE else self._read_state
        self._thread = threading.Thread(target=target, args=(fd,), name="device-state",
                                        daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Wait for the transfer; True when it succeeded.  False without a transfer."""
        if self._thread is None:
            log.error("CHECK_DEVICE_STATE without a preceding SET_DEVICE_STATE_FD")
            return False
        self._thread.join()
        self._thread = None
        return self._error is None

    def ring_starting(self) -> None:
        """A ring is about to start: after a save, the migration failed (see the module)."""
        if self._thread is not None:
            self._thread.join()
        if self._saved:
            self._saved = False
            self._resumed()

    def _write_state(self, fd: int) -> None:
        try:
            data = self._save()
            self._saved = True  # even if writing fails: the save may have let go of things
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            log.info("device state saved: %d bytes", len(data))
        except Exception as err:
            self._error = str(err)
            log.exception("saving the device state failed")
        finally:
            os.close(fd)

    def _read_state(self, fd: int) -> None:
        try:
            chunks = []
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            os.close(fd)
            fd = -1
            data = b"".join(chunks)
            log.info("device state received: %d bytes", len(data))
            self._load(data)
        except Exception as err:
            self._error = str(err)
            # The reason is the message (a foreign stream, an inode not found again); the
            # traceback only helps a developer.
            log.error("loading the device state failed: %s", err,
                      exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            if fd >= 0:
                os.close(fd)
