"""Rate-limited logging of what the guest got wrong.

A guest controls how often it sends malformed requests or chains, so each such log line goes
through a :class:`RateLimitedLog`: a hostile guest cannot fill the host's disk or journal.
"""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """At most ``burst`` lines per ``period`` seconds; the rest are counted and reported.

    Callers pass exceptions as ``str(err)``: a log record keeps its arguments, and an exception
    keeps its traceback, whose frames hold views of guest memory and so keep the mappings
    (and the fds they hold) alive for as long as any handler keeps the record.
    """

    def __init__(self, log: logging.Logger, *, burst: int = 10, period: float = 60.0,
                 level: int = logging.ERROR) -> None:
        self._log = log
        self._level = level
        self._burst = burst
        self._period = period
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._emitted = 0
        self._suppressed = 0

    def error(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self._period:
                if self._suppressed:
                    self._log.log(self._level, "%d similar guest errors were not logged",
                                  self._suppressed)
                self._window_start = now
                self._emitted = 0
                self._suppressed = 0
            if self._emitted >= self._burst:
                self._suppressed += 1
                return
            self._emitted += 1
        self._log.log(self._level, message, *args)
