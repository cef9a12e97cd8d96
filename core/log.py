"""Logging setup for the levels the CLI exposes (``--log-level``, ``--syslog``, ``-d``).

The level words are the Rust daemon's: error, warn, info, debug, trace, off.  ``trace`` maps to a
level below DEBUG so that per-request tracing can be switched on separately from debug messages.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
    "off": logging.CRITICAL + 10,
}

#: Where ``--syslog`` sends records: the local syslog socket (a module constant so that tests can
#: point it at a socket of their own).
SYSLOG_SOCKET = "/dev/log"

_STDERR_FORMAT = "[%(asctime)s %(levelname)-5s %(name)s] %(message)s"
_SYSLOG_FORMAT = "virtiofsd[%(process)d]: %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "info", use_syslog: bool = False) -> None:
    """Send the ``virtiofsd*`` loggers to stderr (or syslog) at ``level``; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_virtiofsd", False):
            root.removeHandler(handler)
    if use_syslog:
        address = SYSLOG_SOCKET if os.path.exists(SYSLOG_SOCKET) else ("localhost", 514)
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler._virtiofsd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
