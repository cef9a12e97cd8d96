"""The inode table every ``--inode-file-handles`` strategy shares.

The guest names inodes by FUSE node ids that this daemon hands out; the table maps each node id
to an :class:`Inode` and the guest's lookup count.  An inode is held one of two ways:

- :class:`FdInode`: an O_PATH descriptor, open as long as the guest knows the inode (``never``,
  and ``prefer`` where handles do not work).  It counts against the guest's descriptor budget.
- :class:`HandleInode`: a file handle and the descriptor of its mount (``prefer``,
  ``mandatory``); an O_PATH descriptor is opened from the handle for each operation and closed
  after it, so a guest knowing a million inodes costs no descriptors.

The same host inode always gets the same node id while the guest knows it.  Two indexes find it
again on a second lookup (through another hard link, through ``.`` or ``..``), keyed as the Rust
daemon keys them: mount id and file handle for handle-backed inodes, and :class:`InodeKey`
(device, inode number, mount id, from ``statx``) for descriptor-backed ones.  A handle-backed
inode is never found by its ``InodeKey``: it does not pin its inode, whose number the file
system may reuse for a new file after it is deleted; the handle (which carries a generation)
tells them apart.

Rules (the Rust daemon's, see the reference notes on the inode store):

- Node id 1 is the shared folder, always an O_PATH descriptor.  It is pinned: FORGET lowers its
  count but never removes it, and :meth:`InodeStore.clear` (DESTROY, a second INIT) keeps it.
- Every other node id is fresh (monotonic from 2), never reused within the store's life.
- FORGET saturates at zero (a guest forgetting more than it looked up cannot underflow
  anything); at zero the inode leaves the table.
- Key and handle are taken from the descriptor the lookup just opened, never from the name, so
  they and the descriptor always describe the same inode.

Why descriptors close in ``__del__``: an operation running in another thread may still use an
inode's descriptor when FORGET removes the inode from the table.  Closing there would let the
number be reused by an unrelated open while that operation runs on it.  The descriptor is
therefore owned by an object and closed when the last reference to it is gone (CPython frees
objects as soon as their reference count drops to zero), which is what the Rust daemon gets from
``Arc``.  The same holds for the short-lived descriptor a :class:`HandleInode` gives out
(:class:`PathFd`): keep it in a variable for as long as its number is in use.

Thread safety: one lock guards every change.  ``get`` reads the dict without it; a single dict
read is atomic under the GIL.  LOOKUP and FORGET take the lock with ``acquire``/``release``
rather than ``with``, which costs three times as much in CPython 3.11.
"""

from __future__ import annotations

import enum
import errno
import itertools
import logging
import os
import stat
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from virtiofsd.errors import ConfigError, FuseError
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.sys import ffi
from virtiofsd_plugins.inode_handles.budget import FdBudget
from virtiofsd_plugins.inode_handles.mount_fds import MountFds

log = logging.getLogger(__name__)

#: How a strategy opens a host inode it keeps as a descriptor.
O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_STATX_FLAGS = ffi.AT_EMPTY_PATH | ffi.AT_SYMLINK_NOFOLLOW


class HandleUse(str, enum.Enum):
    """``--inode-file-handles``: when inodes are held as file handles."""

    NEVER = "never"
    PREFER = "prefer"
    MANDATORY = "mandatory"


class InodeKey(NamedTuple):
    """What identifies a host inode: ``st_dev``, ``st_ino`` and the mount id."""

    dev: int
    ino: int
    mnt_id: int


class PathFd(int):
    """An O_PATH descriptor number that closes itself when the last reference goes away."""

    __slots__ = ()

    def __del__(self) -> None:
        try:
            os.close(self)
        except OSError as exc:
            log.error("closing the descriptor %d opened from a file handle failed: %s",
                      int(self), exc)


class Inode:
    """One host inode the guest knows, and how many lookups of it the guest holds.

    ``fd`` is an O_PATH descriptor of the inode: usable as a ``dir_fd``, for ``fstat``,
    ``fstatvfs`` and reopening through ``/proc/self/fd``; not for reading or writing.
    """

    __slots__ = ("file_type", "key", "nodeid", "refcount")

    #: The file handle of a handle-backed inode; ``None`` for a descriptor-backed one.
    handle: ffi.FileHandle | None = None
    fd: int

    def __init__(self, nodeid: int, key: InodeKey, file_type: int, refcount: int) -> None:
        self.nodeid = nodeid
        self.key = key
        #: ``stat.S_IFMT`` of the mode: the type of an inode never changes.
        self.file_type = file_type
        self.refcount = refcount

    @property
    def is_dir(self) -> bool:
        return self.file_type == stat.S_IFDIR

    @property
    def reopenable(self) -> bool:
        """Whether the inode may be reopened for I/O through ``/proc/self/fd``: only regular
        files and folders.  Reopening a FIFO would block the thread and a device node would
        open a host device (CVE-2020-35517)."""
        return self.file_type == stat.S_IFREG or self.file_type == stat.S_IFDIR

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(nodeid={self.nodeid}, dev={self.key.dev}, "
                f"ino={self.key.ino}, mnt_id={self.key.mnt_id}, refcount={self.refcount})")


class FdInode(Inode):
    """An inode held as an O_PATH descriptor for as long as the guest knows it."""

    __slots__ = ("_budget", "fd")

    def __init__(self, nodeid: int, fd: int, key: InodeKey, file_type: int, refcount: int,
                 budget: FdBudget | None = None) -> None:
        super().__init__(nodeid, key, file_type, refcount)
        self.fd = fd
        self._budget = budget

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError as exc:
            log.error("closing the descriptor of node %d failed: %s", self.nodeid, exc)
        if self._budget is not None:
            self._budget.release()


class HandleInode(Inode):
    """An inode held as a file handle; each use of :attr:`fd` opens a fresh :class:`PathFd`."""

    __slots__ = ("handle", "mount_fd")

    def __init__(self, nodeid: int, handle: ffi.FileHandle, mount_fd: int, key: InodeKey,
                 file_type: int, refcount: int) -> None:
        super().__init__(nodeid, key, file_type, refcount)
        self.handle = handle
        self.mount_fd = mount_fd

    @property
    def fd(self) -> PathFd:  # type: ignore[override]
        """A new O_PATH descriptor of the inode, closed when the returned object is dropped.

        :raises OSError: ESTALE when the inode no longer exists on the host.
        """
        return PathFd(ffi.open_by_handle_at(self.mount_fd, self.handle, O_PATH_FLAGS))


class InodeStore:
    """Node id -> :class:`Inode`, with lookup counts, the handle and the (dev, ino, mnt_id)
    indexes, and the guest's descriptor budget."""

    def __init__(self, root_fd: int, root_st: Any, root_mnt_id: int = 0,
                 handles: HandleUse = HandleUse.NEVER, budget: FdBudget | None = None,
                 mount_fds: MountFds | None = None) -> None:
        """Take ownership of ``root_fd`` (an O_PATH descriptor of the shared folder) and of
        ``mount_fds``.  ``handles`` other than NEVER needs ``mount_fds``."""
        self._lock = threading.Lock()
        self._ids = itertools.count(ROOT_ID + 1)
        #: The strategy in force (``prefer`` becomes ``never`` when handles do not work here).
        self.handles = handles
        self._uses_handles = handles is not HandleUse.NEVER
        self.fd_budget = budget if budget is not None else FdBudget.from_rlimit()
        self._mount_fds = mount_fds
        key = InodeKey(root_st.st_dev, root_st.st_ino, root_mnt_id)
        # A count of 2 for the root, as libfuse and the Rust daemon start it.
        self._root = FdInode(ROOT_ID, root_fd, key, stat.S_IFMT(root_st.st_mode), 2)
        self._inodes: dict[int, Inode] = {ROOT_ID: self._root}
        self._by_key: dict[InodeKey, Inode] = {key: self._root}
        #: Keyed by mount id and handle: the handle alone is only unique on its file system,
        #: and two file systems (two tmpfs) can hand out equal ones.
        self._by_handle: dict[tuple[int, ffi.FileHandle], Inode] = {}

    @classmethod
    def open_shared_dir(cls, path: str, handles: HandleUse = HandleUse.NEVER) -> InodeStore:
        """A store whose root is the folder ``path`` (opened O_PATH, following a symlink in
        the user-given path; the folder itself must be a folder).

        With ``prefer`` or ``mandatory``, first checks that a file handle of the root can be
        made and opened again: ``prefer`` falls back to ``never`` with one warning,
        ``mandatory`` refuses to start.

        :raises ConfigError: ``path`` cannot be opened or is not a folder; ``mandatory`` and
            file handles do not work.
        """
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot open the shared directory {path!r}: "
                              f"{exc.strerror}") from exc
        mount_fds = None
        try:
            root = ffi.statx(fd, b"", _STATX_FLAGS)
            if handles is not HandleUse.NEVER:
                mount_fds = MountFds()
                problem = _handle_problem(fd, root, mount_fds)
                if problem is not None:
                    mount_fds.close()
                    mount_fds = None
                    if handles is HandleUse.MANDATORY:
                        raise ConfigError(f"--inode-file-handles=mandatory: file handles do not "
                                          f"work on the shared directory {path!r}: {problem}")
                    log.warning("file handles do not work on the shared directory %r (%s): "
                                "holding inodes as O_PATH file descriptors, as with "
                                "--inode-file-handles=never", path, problem)
                    handles = HandleUse.NEVER
        except BaseException:
            os.close(fd)
            if mount_fds is not None:
                mount_fds.close()
            raise
        return cls(fd, root, root.mnt_id, handles, mount_fds=mount_fds)

    @property
    def root(self) -> Inode:
        return self._root

    def get(self, nodeid: int) -> Inode:
        """The inode of ``nodeid``.  :raises FuseError: EBADF for an id the guest does not hold
        (the Rust daemon's answer)."""
        inode = self._inodes.get(nodeid)
        if inode is None:
            raise FuseError(errno.EBADF, f"unknown node id {nodeid}")
        return inode

    def claim(self, path_fd: int) -> tuple[Inode, ffi.Statx]:
        """Count one more lookup of the inode ``path_fd`` (an O_PATH descriptor) describes.

        Takes ownership of ``path_fd``: it is kept as the inode's descriptor or closed.

        :returns: the inode and its attributes (from ``statx`` of ``path_fd``).
        :raises FuseError: ENFILE when the inode would be a new descriptor and the guest's
            budget is spent.
        :raises OSError: with ``mandatory``, why no file handle could be made (EOPNOTSUPP on a
            file system without export support).
        """
        try:
            found = ffi.statx(path_fd, b"", _STATX_FLAGS)
            if self._uses_handles:
                handle, mount_fd = self._handle_of(path_fd, found)
            else:
                handle = mount_fd = None
        except BaseException:
            os.close(path_fd)
            raise
        return self._claim(path_fd, found, handle, mount_fd), found

    def _handle_of(self, path_fd: int, found: ffi.Statx
                   ) -> tuple[ffi.FileHandle | None, int | None]:
        assert self._mount_fds is not None
        try:
            handle, _ = ffi.name_to_handle_at(path_fd, b"", ffi.AT_EMPTY_PATH)
            mount_fd = self._mount_fds.get(found.mnt_id, path_fd, stat.S_IFMT(found.st_mode))
        except OSError:
            if self.handles is HandleUse.MANDATORY:
                raise
            return None, None
        return handle, mount_fd

    def _claim(self, fd: int, found: ffi.Statx, handle: ffi.FileHandle | None,
               mount_fd: int | None) -> Inode:
        """The inode already known under ``handle``, else a descriptor-backed one under its
        (dev, ino, mnt_id) (a handle-backed inode found that way may be an older file with the
        same number), with one more lookup; else a new one.  ``fd`` is closed unless the new
        inode keeps it."""
        # A plain tuple: it hashes and compares as the InodeKey it equals.
        key = (found.st_dev, found.st_ino, found.mnt_id)
        self._lock.acquire()
        try:
            inode = None if handle is None else self._by_handle.get((key[2], handle))
            if inode is None:
                inode = self._by_key.get(key)
                if inode is not None and inode.handle is not None:
                    inode = None
            if inode is not None:
                inode.refcount += 1
            else:
                inode = self._insert(next(self._ids), fd, InodeKey(*key),
                                     stat.S_IFMT(found.st_mode), handle, mount_fd, 1,
                                     "a lookup")
                if handle is None:
                    return inode
        finally:
            self._lock.release()
        os.close(fd)
        return inode

    def _insert(self, nodeid: int, fd: int, key: InodeKey, file_type: int,
                handle: ffi.FileHandle | None, mount_fd: int | None, refcount: int,
                what: str) -> Inode:
        """A new inode under ``nodeid`` (lock held): handle-backed when ``handle`` is given,
        else owning ``fd`` (which is closed when the descriptor budget refuses it; ``what``
        names the charge in the budget's warning)."""
        inode: Inode
        if handle is not None:
            assert mount_fd is not None
            inode = HandleInode(nodeid, handle, mount_fd, key, file_type, refcount)
            self._by_handle[key.mnt_id, handle] = inode
        else:
            try:
                self.fd_budget.charge(what)
            except FuseError:
                os.close(fd)
                raise
            inode = FdInode(nodeid, fd, key, file_type, refcount, self.fd_budget)
        self._inodes[inode.nodeid] = inode
        self._by_key[key] = inode
        return inode

    def forget(self, nodeid: int, nlookup: int) -> None:
        """Take back ``nlookup`` lookups of ``nodeid``, saturating at zero.  Unknown ids are
        ignored: FORGET has no reply to carry an error."""
        self._lock.acquire()
        try:
            inode = self._inodes.get(nodeid)
            if inode is not None:
                self._forget_locked(inode, nlookup)
        finally:
            self._lock.release()

    def forget_many(self, forgets: Iterable[tuple[int, int]]) -> None:
        """BATCH_FORGET: :meth:`forget` for each ``(nodeid, nlookup)`` pair under one lock."""
        self._lock.acquire()
        try:
            inodes = self._inodes
            for nodeid, nlookup in forgets:
                inode = inodes.get(nodeid)
                if inode is not None:
                    self._forget_locked(inode, nlookup)
        finally:
            self._lock.release()

    def _forget_locked(self, inode: Inode, nlookup: int) -> None:
        """Lower the count of ``inode`` (in the table); at zero it leaves the table and its
        indexes, unless it is the root."""
        count = inode.refcount - nlookup
        if count > 0:
            inode.refcount = count
            return
        inode.refcount = 0
        if inode.nodeid == ROOT_ID:
            return
        del self._inodes[inode.nodeid]
        key = inode.key
        if self._by_key.get(key) is inode:
            del self._by_key[key]
        if inode.handle is not None:
            handle_key = (key.mnt_id, inode.handle)
            if self._by_handle.get(handle_key) is inode:
                del self._by_handle[handle_key]

    def refcount(self, nodeid: int) -> int:
        """The guest's lookup count of ``nodeid`` (0 when it is not in the table)."""
        inode = self._inodes.get(nodeid)
        return 0 if inode is None else inode.refcount

    def clear(self) -> None:
        """Forget every inode but the root, as DESTROY and a second INIT require."""
        with self._lock:
            self._inodes = {ROOT_ID: self._root}
            self._by_key = {self._root.key: self._root}
            self._by_handle = {}
            self._root.refcount = 2

    def close(self) -> None:
        """Drop every inode, the root included, and the mount fds (the daemon stops)."""
        with self._lock:
            self._inodes = {}
            self._by_key = {}
            self._by_handle = {}
            if self._mount_fds is not None:
                self._mount_fds.close()

    def snapshot(self) -> tuple[list[Inode], int]:
        """Every inode and the next node id, consistent with each other (migration saves them)."""
        with self._lock:
            next_id = next(self._ids)
            self._ids = itertools.count(next_id)
            return list(self._inodes.values()), next_id

    def adopt(self, nodeid: int, fd: int, refcount: int) -> Inode:
        """Insert the inode of ``fd`` (an O_PATH descriptor a migration destination opened)
        under the node id and lookup count the source gave it, held and keyed as a lookup
        would hold and key it, so a later lookup of the same file finds it.

        Takes ownership of ``fd``.  With file handles in use and a handle to be had, the inode
        becomes handle-backed and ``fd`` is closed: a guest that held more inodes than the
        descriptor budget on the source keeps them all here.  Otherwise (``never``, a file
        system without handles under ``prefer``) ``fd`` is kept and charged to the budget.

        :raises FuseError: ENFILE when the inode would be a descriptor and the budget is spent
            (``fd`` is closed).
        :raises OSError: with ``mandatory``, why no file handle could be made (EOPNOTSUPP on a
            file system without export support).
        """
        try:
            found = ffi.statx(fd, b"", _STATX_FLAGS)
            handle, mount_fd = (self._handle_of(fd, found) if self._uses_handles
                                else (None, None))
        except BaseException:
            os.close(fd)
            raise
        key = InodeKey(found.st_dev, found.st_ino, found.mnt_id)
        with self._lock:
            inode = self._insert(nodeid, fd, key, stat.S_IFMT(found.st_mode), handle, mount_fd,
                                 refcount, "a migrated inode")
        if handle is not None:
            os.close(fd)
        return inode

    def continue_ids_from(self, next_id: int) -> None:
        """Never hand out a node id below ``next_id`` (the migration source's counter)."""
        with self._lock:
            self._ids = itertools.count(max(next_id, ROOT_ID + 1))

    def __len__(self) -> int:
        return len(self._inodes)

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._inodes


def _handle_problem(root_fd: int, root: ffi.Statx, mount_fds: MountFds) -> str | None:
    """Why file handles do not work for the shared folder, or ``None`` when a handle of it can
    be made and opened again (which also needs CAP_DAC_READ_SEARCH)."""
    try:
        handle, _ = ffi.name_to_handle_at(root_fd, b"", ffi.AT_EMPTY_PATH)
        mount_fd = mount_fds.get(root.mnt_id, root_fd, stat.S_IFMT(root.st_mode))
        reopened = PathFd(ffi.open_by_handle_at(mount_fd, handle, O_PATH_FLAGS))
        st = os.stat(reopened)
    except OSError as exc:
        hint = " (CAP_DAC_READ_SEARCH is needed)" if exc.errno == errno.EPERM else ""
        return f"{exc.strerror}{hint}: {exc}"
    if (st.st_dev, st.st_ino) != (root.st_dev, root.st_ino):
        return "the handle of the shared directory opens another inode"
    return None
