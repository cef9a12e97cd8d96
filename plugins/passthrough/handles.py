"""The open-file table: FUSE file handles (``fh``) -> host descriptors opened for I/O.

OPEN, CREATE and OPENDIR add a handle; RELEASE and RELEASEDIR remove it; DESTROY drops them all.
A handle belongs to the node id it was opened for, and every use checks that pairing: a guest
naming another node's handle gets EBADF, as from the Rust daemon.

As in the inode store, the descriptor is owned by the :class:`OpenHandle` object and closed when
the last reference is gone, not when RELEASE removes it from the table: a READ running in
another thread keeps its descriptor valid until it returns, and the number cannot be reused by
an unrelated open meanwhile.  Each open handle costs one descriptor of the guest's budget
(:class:`~virtiofsd_plugins.inode_handles.budget.FdBudget`): past it OPEN answers ENFILE.

Each handle has a lock for the operations that use the descriptor's file position (READDIR's
lseek + getdents64, LSEEK).  READ and WRITE use positioned I/O and take no lock.  OPEN and
RELEASE take the table's lock with ``acquire``/``release`` rather than ``with``, which costs
three times as much in CPython 3.11.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading

from virtiofsd.errors import FuseError
from virtiofsd_plugins.inode_handles.budget import FdBudget

log = logging.getLogger(__name__)


class OpenHandle:
    """One open host file or folder."""

    __slots__ = ("_budget", "fd", "fh", "lock", "nodeid")

    def __init__(self, fh: int, nodeid: int, fd: int, budget: FdBudget | None = None) -> None:
        self.fh = fh
        self.nodeid = nodeid
        self.fd = fd
        self._budget = budget
        #: Serializes users of the descriptor's file position.
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenHandle(fh={self.fh}, nodeid={self.nodeid}, fd={self.fd})"

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError as exc:
            log.error("closing the descriptor of handle %d failed: %s", self.fh, exc)
        if self._budget is not None:
            self._budget.release()


class HandleTable:
    """``fh`` -> :class:`OpenHandle`; thread-safe."""

    def __init__(self, budget: FdBudget | None = None) -> None:
        """``budget``: charged one descriptor per open handle (none: unbounded)."""
        self._budget = budget
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._handles: dict[int, OpenHandle] = {}

    def insert(self, nodeid: int, fd: int) -> int:
        """Take ownership of ``fd``, opened for ``nodeid``; :returns: its new handle.

        :raises FuseError: ENFILE when the descriptor budget is spent (``fd`` is closed).
        """
        self._charge(fd, "an open")
        self._lock.acquire()
        try:
            fh = next(self._ids)
            self._handles[fh] = OpenHandle(fh, nodeid, fd, self._budget)
        finally:
            self._lock.release()
        return fh

    def get(self, fh: int, nodeid: int) -> OpenHandle:
        """:raises FuseError: EBADF when ``fh`` is not open or belongs to another node."""
        handle = self._handles.get(fh)
        if handle is None or handle.nodeid != nodeid:
            raise FuseError(errno.EBADF, f"no open handle {fh} for node {nodeid}")
        return handle

    def remove(self, fh: int, nodeid: int) -> None:
        """Forget ``fh`` (its descriptor closes once no operation uses it any more).

        :raises FuseError: EBADF when ``fh`` is not open or belongs to another node.
        """
        self._lock.acquire()
        try:
            handle = self._handles.get(fh)
            if handle is None or handle.nodeid != nodeid:
                raise FuseError(errno.EBADF, f"no open handle {fh} for node {nodeid}")
            del self._handles[fh]
        finally:
            self._lock.release()

    def snapshot(self) -> tuple[list[OpenHandle], int]:
        """Every open handle and the next handle number (migration saves them)."""
        with self._lock:
            next_fh = next(self._ids)
            self._ids = itertools.count(next_fh)
            return list(self._handles.values()), next_fh

    def adopt(self, fh: int, nodeid: int, fd: int) -> None:
        """Insert a handle under the number a migration source gave it (takes ``fd``), charged
        to the budget as an OPEN is.

        :raises FuseError: ENFILE when the descriptor budget is spent (``fd`` is closed).
        """
        self._charge(fd, "a migrated open")
        with self._lock:
            self._handles[fh] = OpenHandle(fh, nodeid, fd, self._budget)

    def _charge(self, fd: int, what: str) -> None:
        """One descriptor of the budget for ``fd``; on ENFILE ``fd`` is closed."""
        if self._budget is not None:
            try:
                self._budget.charge(what)
            except FuseError:
                os.close(fd)
                raise

    def continue_ids_from(self, next_fh: int) -> None:
        with self._lock:
            self._ids = itertools.count(max(next_fh, 1))

    def clear(self) -> None:
        with self._lock:
            self._handles = {}

    def __len__(self) -> int:
        return len(self._handles)
