"""A result delivered later, from another thread: how a request that waits is answered.

Most requests are answered before the handler returns.  A few wait on something outside the
daemon (a blocking lock the host or another guest process holds); serving them inline would
stop the queue behind them.  Such a request returns a :class:`Deferred` instead of its answer:

- a plugin hook returns one in place of its reply and resolves it later with the reply (or
  with the ``FuseError``/``OSError`` to answer);
- the FUSE router returns one in place of the byte count, resolved with the count once the
  reply is written;
- the queue worker completes the chain when that resolves, and before a ring stops it cancels
  whatever is still waiting, so a stopping device never waits for a lock.

Cancelling asks the producer to give up (the guest's FUSE_INTERRUPT, a ring stopping); the
producer still resolves the deferred, normally with EINTR.  A deferred resolves exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_UNSET = object()


class Deferred:
    """One value, set once by :meth:`resolve`, handed to every callback added."""

    __slots__ = ("_lock", "_value", "_callbacks", "_cancel", "_cancelled")

    def __init__(self, cancel: Callable[[], None] | None = None) -> None:
        """:param cancel: called (once, at most) by :meth:`cancel` while unresolved."""
        self._lock = threading.Lock()
        self._value: Any = _UNSET
        self._callbacks: list[Callable[[Any], None]] = []
        self._cancel = cancel
        self._cancelled = False

    @property
    def done(self) -> bool:
        return self._value is not _UNSET

    def resolve(self, value: Any) -> bool:
        """Deliver ``value`` to the callbacks; False (and nothing happens) if already resolved."""
        with self._lock:
            if self._value is not _UNSET:
                return False
            self._value = value
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._run(callback, value)
        return True

    def add_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(value)`` on resolution, at once if that already happened."""
        with self._lock:
            if self._value is _UNSET:
                self._callbacks.append(callback)
                return
            value = self._value
        self._run(callback, value)

    def cancel(self) -> None:
        """Ask the producer to give up; it still resolves (with EINTR, usually)."""
        with self._lock:
            if self._value is not _UNSET or self._cancelled:
                return
            self._cancelled = True
            cancel = self._cancel
        if cancel is not None:
            cancel()

    @staticmethod
    def _run(callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:
            log.exception("a deferred reply's callback failed")
