"""Locks: GETLK, SETLK, SETLKW for POSIX record locks and flock(2), held on the host.

The guest kernel sends every lock request here when POSIX_LOCKS / FLOCK_LOCKS were negotiated,
so the locks must live on the host, where other guest processes, other guests and host
programs meet them.

POSIX record locks belong to a (process, file) pair: the guest names the process by the
request's ``lock_owner``.  Host locks of the classic F_SETLK kind would all belong to the daemon
process and never conflict with each other, so open-file-description locks (``F_OFD_*``) are
used instead, each owner getting its own host open of the inode (as the C virtiofsd's
``inode->posix_locks``).  Locks of one owner merge and split as POSIX says because they share
that open; locks of two owners conflict because they do not.  close(2) of any descriptor of the
file drops the process's locks: FLUSH carries the owner, and the owner's open is closed.

flock(2) locks belong to an open file description, which is exactly one guest OPEN, hence one
handle: they are taken with flock(2) on the handle's own descriptor, and RELEASE (with
RELEASE_FLOCK_UNLOCK) lets them go.

A blocking request (SETLKW) never blocks the calling thread: the first attempt is
non-blocking, and on a conflict the hook returns a :class:`~virtiofsd.deferred.Deferred` that one
waiter thread resolves.  That thread retries every waiting lock whenever a lock is released
through the daemon, and at least every 50 ms for holders outside it (the host, another guest),
which it cannot hear.  Cancelling (FUSE_INTERRUPT, the device stopping, DESTROY) answers EINTR.

OFD locks have no deadlock detection; the daemon does it for waits among its own owners as the
kernel does for process locks (:meth:`LockOps._would_deadlock`): a SETLKW that would close a
cycle of waiting owners is EDEADLK.  A cycle through a holder outside the daemon is not seen.
The holder's pid
reported by GETLK is the guest pid of the owner when the daemon can tell which of its owners
holds the conflicting lock (:func:`_holds`), else 0 (a holder on the host or in another guest;
the C virtiofsd always reports 0 after the kernel's translation of its -1).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable
import logging
from dataclasses import dataclass
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.deferred import Deferred
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EMPTY, LockReply
from virtiofsd_plugins.passthrough.state import PassthroughState

#: ``struct flock`` on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid.
FLOCK_STRUCT = struct.Struct("hhqqi4x")
#: The kernel's OFFSET_MAX: a FUSE lock ending here runs to the end of the file.
OFFSET_MAX = (1 << 63) - 1
_LOCK_TYPES = (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK)
_FLOCK_OPERATIONS = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX,
                     fcntl.F_UNLCK: fcntl.LOCK_UN}
#: Bounds of the retry interval for locks held outside the daemon, in seconds.
_FIRST_RETRY = 0.001
_LAST_RETRY = 0.05
_CONFLICT = (errno.EAGAIN, errno.EACCES)
#: How many waiting owners a deadlock search follows (the kernel's MAX_DEADLK_ITERATIONS).
_MAX_DEADLOCK_DEPTH = 10
log = logging.getLogger(__name__)
_POSIX_LOCKS = int(abi.InitFlag.POSIX_LOCKS)
_FLOCK_LOCKS = int(abi.InitFlag.FLOCK_LOCKS)


def flock_bytes(lock_type: int, start: int, end: int) -> bytes:
    """A ``struct flock`` for the FUSE range ``start``..``end`` (inclusive)."""
    length = 0 if end == OFFSET_MAX else end - start + 1
    return FLOCK_STRUCT.pack(lock_type, os.SEEK_SET, start, length, 0)


def check_range(lock_type: int, start: int, end: int) -> None:
    """:raises FuseError: EINVAL for an unknown type or a range the kernel would refuse."""
    if lock_type not in _LOCK_TYPES:
        raise FuseError(errno.EINVAL, f"lock type {lock_type}")
    if not 0 <= start <= end <= OFFSET_MAX:
        raise FuseError(errno.EINVAL, f"lock range {start}..{end}")


def apply_range(held: list[tuple[int, int, int]], start: int, end: int,
                lock_type: int) -> list[tuple[int, int, int]]:
    """The ranges ``(start, end, type)`` one owner holds after it set ``lock_type`` (F_UNLCK
    to unlock) over ``start``..``end``, as POSIX merges and splits them: the new range replaces
    whatever it overlaps, and touching ranges of one type join (sans-IO, so the daemon knows
    which locks it would hand over in a live migration without asking /proc)."""
    kept: list[tuple[int, int, int]] = []
    for low, high, kind in held:
        if high < start or low > end:
            kept.append((low, high, kind))
            continue
        if low < start:
            kept.append((low, start - 1, kind))
        if high > end:
            kept.append((end + 1, high, kind))
    if lock_type != fcntl.F_UNLCK:
        kept.append((start, end, lock_type))
    merged: list[tuple[int, int, int]] = []
    for low, high, kind in sorted(kept):
        if merged and merged[-1][2] == kind and merged[-1][1] + 1 >= low:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high), kind)
        else:
            merged.append((low, high, kind))
    return merged


def _holds(fd: int, lock_type: int, start: int, end: int, probes: int = 8) -> bool:
    """Whether the open ``fd`` holds the lock ``lock_type`` over ``start``..``end`` that
    conflicted with someone else.

    Asked from that open, the weakest type that lock conflicts with finds nothing in some part
    of the range exactly when the open holds it: held by anyone else, it would conflict all
    over.  The part found conflicting (another owner's lock) is cut out and the rest asked
    again, a few times at most.
    """
    probe = fcntl.F_WRLCK if lock_type == fcntl.F_RDLCK else fcntl.F_RDLCK
    ranges = [(start, end)]
    while ranges and probes:
        probes -= 1
        low, high = ranges.pop()
        found = FLOCK_STRUCT.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                                                flock_bytes(probe, low, high)))
        if found[0] == fcntl.F_UNLCK:
            return True
        found_start, found_len = found[2], found[3]
        found_end = OFFSET_MAX if found_len == 0 else found_start + found_len - 1
        if found_start > low:
            ranges.append((low, found_start - 1))
        if found_end < high:
            ranges.append((found_end + 1, high))
    return False


class _Owner:
    """One guest lock owner's host open of one inode, carrying its OFD locks; ``held`` lists
    them as ``(start, end, type)`` (see :func:`apply_range`); ``handles`` are the guest's open
    files the owner made lock requests through (see :meth:`LockOps.handle_released`)."""

    __slots__ = ("fd", "pid", "held", "handles")

    def __init__(self, fd: int, pid: int) -> None:
        self.fd = fd
        self.pid = pid
        self.held: list[tuple[int, int, int]] = []
        self.handles: set[int] = set()


@dataclass(frozen=True)
class HeldPosixLocks:
    """What one guest lock owner holds on one inode (for live migration), and the guest's open
    files it locked through (see :meth:`LockOps.handle_released`)."""

    nodeid: int
    owner: int
    pid: int
    ranges: tuple[tuple[int, int, int], ...]
    handles: tuple[int, ...] = ()


@dataclass(frozen=True)
class HeldFlock:
    """The flock lock of one open handle (for live migration)."""

    fh: int
    nodeid: int
    lock_type: int


def _as_os_error(err: OSError | FuseError) -> OSError:
    if isinstance(err, OSError):
        return err
    return OSError(err.errno, str(err))


def _log_lost(what: str, err: OSError) -> None:
    log.error("migration failed and the guest carries on here, but its %s cannot be taken "
              "back: %s; the owner's lock requests now get EIO", what, err)


class _Wait:
    """A SETLKW waiting for its lock: ``attempt`` takes it without blocking, or says False.

    ``reply`` is what the hook returned; cancelling it calls ``on_cancel``.
    """

    __slots__ = ("attempt", "reply", "key", "request", "fh", "cancelled")

    def __init__(self, attempt: Callable[[], bool], key: tuple[int, int] | None,
                 request: bytes, fh: int | None, on_cancel: Callable[[_Wait], None]) -> None:
        self.attempt = attempt
        self.key = key
        self.request = request
        self.fh = fh
        self.cancelled = False
        self.reply = Deferred(cancel=lambda: on_cancel(self))


class LockOps:
    """The lock operations of one passthrough file system."""

    def __init__(self, state: PassthroughState) -> None:
        self._state = state
        self._inodes = state.inodes
        self._handles = state.handles
        #: Guards the owner table, the wait list and every posix lock call.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._owners: dict[tuple[int, int], _Owner] = {}
        self._waits: list[_Wait] = []
        self._waiter: threading.Thread | None = None
        self._closing = False
        #: Handle -> (node id, F_RDLCK / F_WRLCK) of the flock lock it holds.
        self._flocks: dict[int, tuple[int, int]] = {}
        #: The source of a live migration let go of its host locks (see
        #: :meth:`release_for_migration`).
        self._released = False
        #: Locks not taken again after a live migration (``--migration-on-error=guest-error``):
        #: the POSIX owners (nodeid, owner) and the flock handles whose lock requests fail with
        #: EIO until the guest closes the file (FLUSH, RELEASE).
        self._lost_owners: set[tuple[int, int]] = set()
        self._lost_flocks: set[int] = set()

    # --- Hooks ---------------------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_getlk(self, req: Any, nodeid: int, fh: int, owner: int, start: int,
                             end: int, lock_type: int, pid: int, lk_flags: int) -> Any:
        if not req.session.flags & _POSIX_LOCKS:
            raise FuseError(errno.ENOSYS, "POSIX locks were not negotiated")
        self._handles.get(fh, nodeid)
        check_range(lock_type, start, end)
        if lock_type == fcntl.F_UNLCK:
            raise FuseError(errno.EINVAL, "F_GETLK of F_UNLCK")
        self._check_not_lost((nodeid, owner), None)
        query = flock_bytes(lock_type, start, end)
        with self._lock:
            own = self._owner(nodeid, owner, pid, fh)
            found = FLOCK_STRUCT.unpack(fcntl.fcntl(own.fd, fcntl.F_OFD_GETLK, query))
            if found[0] == fcntl.F_UNLCK:
                return LockReply(0, 0, fcntl.F_UNLCK, 0)
            found_type, _whence, found_start, found_len, _pid = found
            found_end = OFFSET_MAX if found_len == 0 else found_start + found_len - 1
            holder = self._holder_pid(nodeid, owner, lock_type, found_start, found_end)
        return LockReply(found_start, found_end, found_type, holder)

    @hookimpl
    def virtiofsd_fuse_setlk(self, req: Any, nodeid: int, fh: int, owner: int, start: int,
                             end: int, lock_type: int, pid: int, lk_flags: int,
                             sleep: bool) -> Any:
        handle = self._handles.get(fh, nodeid)
        check_range(lock_type, start, end)
        if lk_flags & abi.LK_FLOCK:
            if not req.session.flags & _FLOCK_LOCKS:
                raise FuseError(errno.ENOSYS, "flock locks were not negotiated")
            self._check_not_lost(None, fh)
            request = b""

            def attempt() -> bool:
                return self._try_flock(fh, nodeid, handle.fd, lock_type)

            key = None
        else:
            if not req.session.flags & _POSIX_LOCKS:
                raise FuseError(errno.ENOSYS, "POSIX locks were not negotiated")
            request = flock_bytes(lock_type, start, end)
            key = (nodeid, owner)
            self._check_not_lost(key, None)
            if lock_type == fcntl.F_UNLCK:
                self._unlock(key, request, start, end)
                return EMPTY

            def attempt() -> bool:
                return self._try_posix(key, pid, fh, request, (start, end, lock_type))

        if attempt():
            if lock_type == fcntl.F_UNLCK:
                self._notify()
            return EMPTY
        if not sleep:
            raise FuseError(errno.EAGAIN, "the range is locked")
        wait = _Wait(attempt, key, request, fh if key is None else None, self._cancel_wait)
        with self._lock:
            if self._closing:
                raise FuseError(errno.EINTR, "the file system is stopping")
            if key is not None and self._would_deadlock(key, request):
                raise FuseError(errno.EDEADLK, "waiting would deadlock")
            self._waits.append(wait)
            self._start_waiter()
            self._changed.notify()
        return wait.reply

    # --- Closing (called by the open-file operations, before they close) ----------------------

    def owner_closed(self, nodeid: int, lock_owner: int) -> None:
        """FLUSH: close(2) of any descriptor drops the process's POSIX locks on the file."""
        self._drop_owner((nodeid, lock_owner))

    def handle_released(self, nodeid: int, fh: int, release_flags: int) -> None:
        """RELEASE, the last close of an open file: its flock lock goes and its waits end, and
        so do the POSIX owners that made lock requests through no other open file.

        An owner that only ever used this file is an open-file-description lock owner
        (``F_OFD_SETLK`` in the guest names the open file itself as the owner): Linux sends no
        FLUSH for it and no unlock at the last close, so its locks would outlive the file.  A
        process owner (classic ``F_SETLK``) was already dropped by the FLUSH of its close(2).

        FLOCK_UNLOCK is ignored without ``-o flock``, when the daemon takes no flock lock (a
        guest kernel does not send it then, a hostile guest may): the seccomp filter would answer
        flock(2) with EOPNOTSUPP, and the file would stay open.
        """
        self._lock.acquire()  # not ``with`` (every RELEASE): it costs three times as much
        try:
            if self._waits:
                for wait in self._waits:
                    if wait.fh == fh:
                        wait.cancelled = True
                self._changed.notify()
            self._flocks.pop(fh, None)
            self._lost_flocks.discard(fh)
            if self._owners:
                self._drop_owners_of_handle(nodeid, fh)
        finally:
            self._lock.release()
        if release_flags & abi.RELEASE_FLOCK_UNLOCK and self._state.config.flock:
            try:
                fd = self._handles.get(fh, nodeid).fd
            except FuseError:
                return  # the open-file operations answer the unknown handle (EBADF)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._notify()

    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_destroy(self, req: Any) -> Any:
        """The session ends: every wait gets EINTR and every owner's open is closed; the rest
        of the reset is left to the other operations (None)."""
        self._drop_all()
        return None

    @hookimpl
    def virtiofsd_unconfigure(self, config: Any) -> None:
        self._drop_all()
        with self._lock:
            self._closing = True
            self._changed.notify()
            waiter = self._waiter
        if waiter is not None:
            waiter.join()

    # --- POSIX owners --------------------------------------------------------------------------

    def _owner(self, nodeid: int, owner: int, pid: int, fh: int | None = None) -> _Owner:
        """The owner's open of the inode, opened on first use (caller holds ``_lock``); ``fh``
        is the guest's open file the request came through.

        Opened read-write when the host allows it, so the owner can take both lock types; the
        guest kernel already refused a write lock on a descriptor not open for writing.
        """
        key = (nodeid, owner)
        found = self._owners.get(key)
        if found is None:
            found = _Owner(self._open_for_locks(nodeid), pid)
            self._owners[key] = found
        elif pid:
            found.pid = pid
        if fh is not None:
            found.handles.add(fh)
        return found

    def _open_for_locks(self, nodeid: int) -> int:
        inode = self._inodes.get(nodeid)
        last: OSError | None = None
        for access in (os.O_RDWR, os.O_RDONLY, os.O_WRONLY):
            try:
                return self._state.reopen(inode, access | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ETXTBSY):
                    raise
                last = exc
        assert last is not None
        raise last

    def _try_posix(self, key: tuple[int, int], pid: int, fh: int, request: bytes,
                   span: tuple[int, int, int]) -> bool:
        with self._lock:
            own = self._owner(key[0], key[1], pid, fh)
            try:
                fcntl.fcntl(own.fd, fcntl.F_OFD_SETLK, request)
            except OSError as exc:
                if exc.errno in _CONFLICT:
                    return False
                raise
            own.held = apply_range(own.held, *span)
        return True

    def _unlock(self, key: tuple[int, int], request: bytes, start: int, end: int) -> None:
        with self._lock:
            own = self._owners.get(key)
            if own is not None:
                fcntl.fcntl(own.fd, fcntl.F_OFD_SETLK, request)
                own.held = apply_range(own.held, start, end, fcntl.F_UNLCK)
            self._changed.notify()

    def _check_not_lost(self, key: tuple[int, int] | None, fh: int | None) -> None:
        """:raises FuseError: EIO for an owner or handle whose lock a live migration lost."""
        with self._lock:
            if key in self._lost_owners or fh in self._lost_flocks:
                raise FuseError(errno.EIO, "a lock held before the live migration was lost "
                                "(--migration-on-error=guest-error); close the file")

    def _holder_pid(self, nodeid: int, asker: int, lock_type: int, start: int, end: int) -> int:
        """The guest pid of the owner holding the conflicting lock (``lock_type`` over
        ``start``..``end``), or 0 when no owner of this daemon can be shown to hold it.
        Caller holds ``_lock``."""
        for (node, owner), own in self._owners.items():
            if node == nodeid and owner != asker and _holds(own.fd, lock_type, start, end):
                return own.pid
        return 0

    def _blocker(self, key: tuple[int, int], request: bytes) -> tuple[int, int] | None:
        """The owner of this daemon holding the first lock that blocks ``request`` of the
        owner ``key``, or None (no conflict, or a holder outside).  Caller holds ``_lock``."""
        own = self._owners.get(key)
        if own is None:
            return None
        found = FLOCK_STRUCT.unpack(fcntl.fcntl(own.fd, fcntl.F_OFD_GETLK, request))
        if found[0] == fcntl.F_UNLCK:
            return None
        start, length = found[2], found[3]
        end = OFFSET_MAX if length == 0 else start + length - 1
        for other, other_own in self._owners.items():
            if (other[0] == key[0] and other[1] != key[1]
                    and _holds(other_own.fd, found[0], start, end)):
                return other
        return None

    def _would_deadlock(self, key: tuple[int, int], request: bytes) -> bool:
        """Whether the owner of ``key`` waiting for ``request`` closes a cycle: the holder
        blocking it waits for a lock held by ... the owner itself.  Follows the first blocker
        at each step, as the kernel does for process-owned locks (OFD locks have no such
        check).  Caller holds ``_lock``."""
        owner = key[1]
        current: tuple[tuple[int, int], bytes] | None = (key, request)
        for _step in range(_MAX_DEADLOCK_DEPTH):
            if current is None:
                return False
            blocker = self._blocker(*current)
            if blocker is None:
                return False
            if blocker[1] == owner:
                return True
            current = next(((wait.key, wait.request) for wait in self._waits
                            if wait.key is not None and wait.key[1] == blocker[1]
                            and not wait.cancelled), None)
        return False

    def _drop_owner(self, key: tuple[int, int]) -> None:
        self._lock.acquire()  # not ``with`` (every FLUSH): it costs three times as much
        try:
            self._close_owner(key)
        finally:
            self._lock.release()

    def _close_owner(self, key: tuple[int, int]) -> None:
        """Forget owner ``key``: its host open (and with it its locks) closes, its waits end.
        Caller holds ``_lock``."""
        self._lost_owners.discard(key)
        own = self._owners.pop(key, None)
        if own is None:
            return
        for wait in self._waits:
            if wait.key == key:
                wait.cancelled = True
        os.close(own.fd)
        self._changed.notify()

    def _drop_owners_of_handle(self, nodeid: int, fh: int) -> None:
        """The guest released ``fh``: close the owners of ``nodeid`` that used no other open
        file (see :meth:`handle_released`).  Caller holds ``_lock``."""
        done = []
        for key, own in self._owners.items():
            if key[0] == nodeid and fh in own.handles:
                own.handles.discard(fh)
                if not own.handles:
                    done.append(key)
        for key in done:
            self._close_owner(key)

    # --- Live migration ------------------------------------------------------------------------

    def held(self) -> tuple[list[HeldPosixLocks], list[HeldFlock]]:
        """Every lock the guest holds: POSIX ranges per (inode, owner), flock per handle."""
        with self._lock:
            posix = [HeldPosixLocks(node, owner, own.pid, tuple(own.held),
                                    tuple(sorted(own.handles)))
                     for (node, owner), own in self._owners.items() if own.held]
            flocks = [HeldFlock(fh, node, kind) for fh, (node, kind) in self._flocks.items()]
        return posix, flocks

    def release_for_migration(self) -> None:
        """The source, its state saved: let go of every host lock so that the destination
        daemon, running at the same time, can take them.  The guest is stopped, so nothing
        can use them in between; the records stay, for :meth:`retake_after_failed_migration`."""
        with self._lock:
            for own in self._owners.values():
                if own.held:
                    fcntl.fcntl(own.fd, fcntl.F_OFD_SETLK,
                                flock_bytes(fcntl.F_UNLCK, 0, OFFSET_MAX))
            for fh, (node, _kind) in self._flocks.items():
                fcntl.flock(self._handles.get(fh, node).fd, fcntl.LOCK_UN)
            self._released = self._released or bool(self._owners or self._flocks)

    def retake_after_failed_migration(self) -> None:
        """The source's rings start again after a save: the migration failed and this guest
        carries on, so take back what :meth:`release_for_migration` let go.  A lock someone
        took in between is lost: logged, and its owner gets EIO as after a ``guest-error``
        migration."""
        if not self._released:
            return
        self._released = False
        posix, flocks = self.held()
        self.reset()
        self.adopt(posix, flocks, _log_lost)

    def adopt(self, posix: list[HeldPosixLocks], flocks: list[HeldFlock],
              failed: Callable[[str, OSError], None]) -> None:
        """The destination (or a source taking its locks back): take every lock a guest held,
        without waiting.  ``failed(what, error)`` is told of each lock that cannot be taken; it
        raises to give up (``--migration-on-error=abort``) or returns, and the owner's lock
        requests on that file then fail with EIO until the guest closes it."""
        for held in posix:
            key = (held.nodeid, held.owner)
            for start, end, kind in held.ranges:
                try:
                    check_range(kind, start, end)
                    if held.nodeid not in self._inodes:
                        raise OSError(errno.EBADF, "its file was not migrated")
                    with self._lock:
                        own = self._owner(held.nodeid, held.owner, held.pid)
                        own.handles.update(held.handles)
                        fcntl.fcntl(own.fd, fcntl.F_OFD_SETLK, flock_bytes(kind, start, end))
                        own.held = apply_range(own.held, start, end, kind)
                except (OSError, FuseError) as err:
                    failed(f"POSIX lock {start}..{end} of owner {held.owner:#x} (guest pid "
                           f"{held.pid}) on node {held.nodeid}", _as_os_error(err))
                    with self._lock:
                        self._lost_owners.add(key)
        for flock in flocks:
            try:
                if flock.lock_type not in _FLOCK_OPERATIONS:
                    raise OSError(errno.EINVAL, f"lock type {flock.lock_type}")
                handle = self._handles.get(flock.fh, flock.nodeid)
                if not self._try_flock(flock.fh, flock.nodeid, handle.fd, flock.lock_type):
                    raise OSError(errno.EAGAIN, "held by someone else")
            except (OSError, FuseError) as err:
                failed(f"flock of handle {flock.fh} on node {flock.nodeid}", _as_os_error(err))
                with self._lock:
                    self._lost_flocks.add(flock.fh)

    def reset(self) -> None:
        """Forget every lock and owner (closing their host opens) and end every wait."""
        self._drop_all()

    # --- flock ---------------------------------------------------------------------------------

    def _try_flock(self, fh: int, nodeid: int, fd: int, lock_type: int) -> bool:
        try:
            fcntl.flock(fd, _FLOCK_OPERATIONS[lock_type] | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _CONFLICT:
                return False
            raise
        with self._lock:
            if lock_type == fcntl.F_UNLCK:
                self._flocks.pop(fh, None)
            else:
                self._flocks[fh] = (nodeid, lock_type)
        return True

    # --- Waiting -------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._lock:
            self._changed.notify()

    def _cancel_wait(self, wait: _Wait) -> None:
        """FUSE_INTERRUPT or a stopping ring: the waiter answers EINTR at its next look, now."""
        self._cancel_waits(lambda candidate: candidate is wait)

    def _cancel_waits(self, which: Callable[[_Wait], bool]) -> None:
        with self._lock:
            for wait in self._waits:
                if which(wait):
                    wait.cancelled = True
            self._changed.notify()

    def _drop_all(self) -> None:
        with self._lock:
            owners, self._owners = self._owners, {}
            self._flocks.clear()
            self._lost_owners.clear()
            self._lost_flocks.clear()
            for wait in self._waits:
                wait.cancelled = True
            for own in owners.values():
                os.close(own.fd)
            self._changed.notify()

    def _start_waiter(self) -> None:
        """Start the waiter thread on the first wait (caller holds ``_lock``)."""
        if self._waiter is None:
            self._waiter = threading.Thread(target=self._wait_loop, name="lock-waiter",
                                            daemon=True)
            self._waiter.start()

    def _wait_loop(self) -> None:
        """Retry the waiting locks, oldest first, until the file system stops."""
        delay = _FIRST_RETRY
        while True:
            with self._lock:
                while not self._waits and not self._closing:
                    self._changed.wait()
                    delay = _FIRST_RETRY
                if self._closing and not self._waits:
                    return
                waits = list(self._waits)
            answered = [(wait, outcome) for wait in waits
                        if (outcome := self._retry(wait)) is not None]
            with self._lock:
                for wait, _outcome in answered:
                    self._waits.remove(wait)
                if len(answered) < len(waits) and not any(wait.cancelled
                                                          for wait in self._waits):
                    if self._changed.wait(delay):
                        delay = _FIRST_RETRY
                    else:
                        delay = min(delay * 2, _LAST_RETRY)
            for wait, outcome in answered:
                wait.reply.resolve(outcome)

    @staticmethod
    def _retry(wait: _Wait) -> Any:
        """EMPTY when the lock was taken, the error to answer, or None to keep waiting."""
        if wait.cancelled:
            return FuseError(errno.EINTR, "the lock wait was interrupted")
        try:
            return EMPTY if wait.attempt() else None
        except OSError as exc:
            return exc
