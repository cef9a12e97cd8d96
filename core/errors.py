"""The exceptions that cross module boundaries, and what each one means for the peer.

- :class:`FuseError` is the one exception a FUSE operation raises on purpose: the router answers
  the guest with ``-errno``.  An ``OSError`` is treated the same way, through its ``errno``.
- :class:`GuestProtocolError`: the guest broke the virtio or FUSE protocol (a descriptor outside
  guest memory, a request whose lengths lie).  The request gets an error answer where one can be
  written, and the daemon keeps serving.
- :class:`FrontendProtocolError`: the vhost-user front-end (QEMU) sent a message we cannot accept.
  The connection ends with a clear log line.
- :class:`ConfigError`: the command line or a plugin's configuration is unusable; the daemon exits
  before it listens.
"""

from __future__ import annotations

import errno as errno_codes
import os


class FuseError(Exception):
    """A FUSE operation failed with ``errno``; the guest receives ``-errno``."""

    def __init__(self, errno: int, message: str | None = None) -> None:
        self.errno = errno
        text = message or os.strerror(errno)
        super().__init__(f"[{errno_codes.errorcode.get(errno, errno)}] {text}")


class GuestProtocolError(Exception):
    """The guest sent something that breaks the virtio or FUSE protocol."""


class FrontendProtocolError(Exception):
    """The vhost-user front-end sent a message that cannot be accepted; the connection ends."""


class ConfigError(Exception):
    """The configuration cannot be used; the message says which option and why."""
