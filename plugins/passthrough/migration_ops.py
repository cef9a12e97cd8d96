"""Saving and restoring the passthrough file system's state for live migration.

The source (``virtiofsd_migration_save``) records the FUSE session, every inode the guest holds
(node id, lookup count, type and where the destination finds it, from the ``--migration-mode``
strategy) and every open handle (its host open flags and file position).  The destination
(``virtiofsd_migration_load``) opens each inode again under the same node id, reopens each
handle under the same number, and continues the id counters where the source left them, so
the guest's node ids and handles stay valid.

Locks travel too (format version 2): every POSIX record lock per (inode, guest lock owner) with
its ranges, types and guest pid (and, since version 3, the open handles it locked through, so an
open-file-description lock still goes at its file's RELEASE), and every flock per handle.  Both daemons run at once on the
same host during the switch-over, and the source's OFD locks would keep the destination from
taking them, so the source lets go of its host locks as soon as its state is encoded: its guest
is stopped by then (the save comes after GET_VRING_BASE), and QEMU sends the bytes on only after
reading them, so the destination always loads after that release.  The destination takes every
lock again, without waiting, before it reports the load done.  Should the migration fail after
all, the source's rings start again and it takes its locks back
(``virtiofsd_migration_resumed``).

Each inode opened again is held as the destination's own inode store holds a looked-up one
(a file handle under ``prefer``, a descriptor charged to the budget under ``never``).  An inode
the destination cannot open again, or cannot hold (the descriptor budget spent, no file handle
under ``mandatory``), is handled per ``--migration-on-error``: ``abort`` fails the load (QEMU
aborts the migration and the source keeps running); ``guest-error`` leaves it out, so every
later use by the guest gets EBADF, and so do its open handles.  The same goes for a lock held
by someone else by the time the destination takes it: ``abort`` fails the load;
``guest-error`` loads without it, and that owner's lock requests on that file (for flock: that
handle's) get EIO until the guest closes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError
from virtiofsd.fuse.abi import InitFlag
from virtiofsd.fuse.session import FuseSession
from virtiofsd_plugins.migration import format as state_format
from virtiofsd_plugins.migration.strategies import check_same_inode, open_location
from virtiofsd_plugins.passthrough.locks import HeldFlock, HeldPosixLocks, LockOps

log = logging.getLogger(__name__)

#: Flags that created or truncated the file at its first open; a reopen must not repeat them.
_ONE_TIME_FLAGS = os.O_CREAT | os.O_EXCL | os.O_TRUNC


_LOCK_FLAGS = int(InitFlag.POSIX_LOCKS | InitFlag.FLOCK_LOCKS)


class MigrationError(Exception):
    """The destination cannot take over this state (``--migration-on-error=abort``)."""


class MigrationOps:
    def __init__(self, state: Any, strategy: Any, locks: LockOps) -> None:
        self._state = state
        self._strategy = strategy
        self._locks = locks
        self._abort_on_error = state.config.migration_on_error != "guest-error"

    @hookimpl
    def virtiofsd_migration_save(self, session: Any) -> bytes:
        inodes, next_nodeid = self._state.inodes.snapshot()
        handles, next_fh = self._state.handles.snapshot()
        locations = self._strategy.locate_all(self._state, inodes)
        saved = state_format.DeviceState(
            state_format.SessionState(session.major, session.minor, session.flags,
                                      session.max_write, session.max_readahead,
                                      session.max_pages),
            next_nodeid, next_fh)
        invalid = 0
        for inode in inodes:
            location = locations[inode.nodeid]
            invalid += location.kind is state_format.LocationKind.INVALID
            verify = (None if location.kind is not state_format.LocationKind.PATH
                      else self._strategy.verify_handle(inode))
            saved.inodes.append(state_format.InodeState(inode.nodeid, inode.refcount,
                                                        inode.file_type, location, verify))
        for handle in handles:
            flags = fcntl.fcntl(handle.fd, fcntl.F_GETFL)
            offset = os.lseek(handle.fd, 0, os.SEEK_CUR)
            saved.handles.append(state_format.HandleState(handle.fh, handle.nodeid, flags, offset))
        posix, flocks = self._locks.held()
        saved.posix_locks = [state_format.PosixLockState(held.nodeid, held.owner, held.pid,
                                                         held.ranges, held.handles)
                             for held in posix]
        saved.flocks = [state_format.FlockState(held.fh, held.nodeid, held.lock_type)
                        for held in flocks]
        data = state_format.encode(saved)
        self._locks.release_for_migration()
        log.info("migration: saved %d inodes (%d not locatable), %d open handles, the POSIX "
                 "locks of %d owners and %d flocks (%s)", len(saved.inodes), invalid,
                 len(saved.handles), len(saved.posix_locks), len(saved.flocks),
                 self._strategy.name)
        return data

    @hookimpl
    def virtiofsd_migration_resumed(self) -> None:
        self._locks.retake_after_failed_migration()

    @hookimpl
    def virtiofsd_migration_load(self, data: bytes) -> FuseSession:
        loaded = state_format.decode(data)
        state = self._state
        state.reset()
        self._locks.reset()
        try:
            self._restore_inodes(loaded)
            self._restore_handles(loaded)
            self._restore_locks(loaded)
        except BaseException:
            self._locks.reset()
            state.reset()
            raise
        state.inodes.continue_ids_from(loaded.next_nodeid)
        state.handles.continue_ids_from(loaded.next_fh)
        s = loaded.session
        log.info("migration: restored %d inodes, %d open handles, the POSIX locks of %d owners "
                 "and %d flocks", len(state.inodes), len(state.handles),
                 len(loaded.posix_locks), len(loaded.flocks))
        return FuseSession(s.major, s.minor, s.flags, s.max_write, s.max_readahead, s.max_pages,
                           initialized=s.major != 0)

    def _failed(self, what: str, err: OSError | FuseError) -> None:
        if self._abort_on_error:
            raise MigrationError(f"{what}: {err} (--migration-on-error=abort)") from err
        log.warning("migration: %s: %s; the guest gets errors for it", what, err)

    def _restore_inodes(self, loaded: state_format.DeviceState) -> None:
        store = self._state.inodes
        root_fd = store.root.fd
        mount_fds: dict[bytes, int] = {}
        try:
            for saved in loaded.inodes:
                if saved.location.kind is state_format.LocationKind.ROOT:
                    store.root.refcount = saved.refcount
                    continue
                try:
                    fd = open_location(root_fd, saved.location, mount_fds)
                except OSError as err:
                    self._failed(f"node {saved.nodeid} cannot be opened again", err)
                    continue
                try:
                    check_same_inode(fd, saved.file_type, saved.verify)
                except OSError as err:
                    os.close(fd)
                    self._failed(f"node {saved.nodeid} ({saved.location.path!r})", err)
                    continue
                try:
                    store.adopt(saved.nodeid, fd, saved.refcount)
                except (OSError, FuseError) as err:
                    self._failed(f"node {saved.nodeid} cannot be held here", err)
        finally:
            for fd in mount_fds.values():
                os.close(fd)

    def _restore_handles(self, loaded: state_format.DeviceState) -> None:
        state = self._state
        for saved in loaded.handles:
            if saved.nodeid not in state.inodes:
                self._failed(f"handle {saved.fh}", OSError(f"its node {saved.nodeid} was not "
                                                           "restored"))
                continue
            inode = state.inodes.get(saved.nodeid)
            try:
                fd = state.reopen(inode, (saved.flags & ~_ONE_TIME_FLAGS) | os.O_CLOEXEC)
                if stat.S_ISREG(inode.file_type) and saved.offset:
                    os.lseek(fd, saved.offset, os.SEEK_SET)
            except OSError as err:
                self._failed(f"handle {saved.fh} of node {saved.nodeid} cannot be reopened", err)
                continue
            try:
                state.handles.adopt(saved.fh, saved.nodeid, fd)
            except FuseError as err:
                self._failed(f"handle {saved.fh} of node {saved.nodeid} cannot be held here",
                             err)


    def _restore_locks(self, loaded: state_format.DeviceState) -> None:
        if loaded.version < 2 and loaded.session.flags & _LOCK_FLAGS:
            log.warning("migration: a version %d device state carries no locks; locks the "
                        "guest held on the source are not held here", loaded.version)
        self._locks.adopt(
            [HeldPosixLocks(held.nodeid, held.owner, held.pid, held.ranges, held.handles)
             for held in loaded.posix_locks],
            [HeldFlock(held.fh, held.nodeid, held.lock_type) for held in loaded.flocks],
            lambda what, err: self._failed(f"the {what} cannot be taken again", err))
