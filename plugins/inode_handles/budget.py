"""The guest's share of RLIMIT_NOFILE: how many descriptors the guest can make the daemon hold.

Every inode kept as an O_PATH descriptor and every open file or folder costs the daemon one
descriptor for as long as the guest wants it.  Without a bound a ``find`` over a big tree with
``--inode-file-handles=never`` runs the daemon out of descriptors, and then the daemon's own
opens (a new memory region, an eventfd, a mount fd) fail too.  The budget stops the guest
``headroom`` descriptors below the limit: past it the guest gets ENFILE ("too many open files
in the system", which is what the daemon is to the guest) and the daemon keeps serving.

Every lookup of a new inode and every open charges the budget, and every close releases it: the
lock is taken with ``acquire``/``release`` rather than ``with``, which costs three times as
much in CPython 3.11.
"""

from __future__ import annotations

import errno
import logging
import resource
import threading

from virtiofsd.errors import FuseError

log = logging.getLogger(__name__)

#: Descriptors kept for the daemon itself: the interpreter, the vhost-user socket, eventfds,
#: memory regions, mount fds, and the short-lived descriptors of requests in flight.
MIN_HEADROOM = 64
MAX_HEADROOM = 256


def headroom_for(limit: int) -> int:
    """A quarter of the limit, at least :data:`MIN_HEADROOM` and at most :data:`MAX_HEADROOM`."""
    return max(MIN_HEADROOM, min(MAX_HEADROOM, limit // 4))


class FdBudget:
    """A counter of descriptors held for the guest, refusing with ENFILE past its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._used = 0
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_rlimit(cls) -> FdBudget:
        """The budget under the RLIMIT_NOFILE soft limit in force (``--rlimit-nofile`` has been
        applied before the plugins are configured)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return cls(soft - headroom_for(soft))

    @property
    def used(self) -> int:
        return self._used

    def charge(self, what: str) -> None:
        """Count one more descriptor held for the guest.

        :raises FuseError: ENFILE when the budget is spent (logged once per daemon).
        """
        self._lock.acquire()
        try:
            if self._used < self.limit:
                self._used += 1
                return
            warn, self._warned = not self._warned, True
        finally:
            self._lock.release()
        if warn:
            log.warning("the guest holds %d descriptors, its whole budget under RLIMIT_NOFILE "
                        "(raise --rlimit-nofile, or use --inode-file-handles=prefer): answering "
                        "ENFILE to %s and whatever else needs one more", self._used, what)
        raise FuseError(errno.ENFILE, f"descriptor budget of {self.limit} spent ({what})")

    def release(self) -> None:
        """One descriptor held for the guest was closed."""
        self._lock.acquire()
        try:
            self._used -= 1
        finally:
            self._lock.release()
