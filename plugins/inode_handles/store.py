"""The inode table every ``--inode-file-handles`` strategy shares.

The guest names inodes by FUSE node ids that this daemon hands out; the table maps each node id
to an :class:`Inode` holding the host inode (an O_PATH descriptor with the ``never`` strategy)
and the guest's lookup count.  The same host inode always gets the same node id while the guest
knows it: an index keyed by :class:`InodeKey` (device, inode number, mount id) finds it again on
a second lookup, through another hard link or through ``.``.

Rules (the Rust daemon's, see the reference notes on the inode store):

- Node id 1 is the shared folder.  It is pinned: FORGET lowers its count but never removes it,
  and :meth:`InodeStore.clear` (DESTROY, a second INIT) keeps it.
- Every other node id is fresh (monotonic from 2), never reused within the store's life.
- FORGET saturates at zero (a guest forgetting more than it looked up cannot underflow
  anything); at zero the inode leaves the table.
- The key is taken from ``fstat`` of the descriptor the lookup just opened, never from the name,
  so the key and the descriptor always describe the same inode.  While a descriptor is open the
  inode cannot be freed, so its number cannot be reused under a stale entry.  The mount id is 0
  until ``statx(STATX_MNT_ID)`` comes in; the key keeps its place.

Why descriptors close in ``__del__``: an operation running in another thread may still use an
inode's descriptor when FORGET removes the inode from the table.  Closing there would let the
number be reused by an unrelated open while that operation runs on it.  The descriptor is
therefore owned by the :class:`Inode` object and closed when the last reference to it is gone
(CPython frees objects as soon as their reference count drops to zero), which is what the Rust
daemon gets from ``Arc``.

Thread safety: one lock guards every change.  ``get`` reads the dict without it; a single dict
read is atomic under the GIL.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from virtiofsd.errors import FuseError
from virtiofsd.fuse.abi import ROOT_ID

log = logging.getLogger(__name__)

#: How a strategy opens a host inode it keeps as a descriptor.
O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class InodeKey(NamedTuple):
    """What identifies a host inode: ``st_dev``, ``st_ino`` and the mount id."""

    dev: int
    ino: int
    mnt_id: int


class Inode:
    """One host inode the guest knows, and how many lookups of it the guest holds."""

    __slots__ = ("fd", "file_type", "key", "nodeid", "refcount")

    def __init__(self, nodeid: int, fd: int, key: InodeKey, file_type: int, refcount: int) -> None:
        self.nodeid = nodeid
        #: An O_PATH descriptor: usable as a ``dir_fd``, for ``fstat``, ``fstatvfs`` and
        #: reopening through ``/proc/self/fd``; not for reading or writing.
        self.fd = fd
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
        return (f"Inode(nodeid={self.nodeid}, fd={self.fd}, dev={self.key.dev}, "
                f"ino={self.key.ino}, refcount={self.refcount})")

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError as exc:
            log.error("closing the descriptor of node %d failed: %s", self.nodeid, exc)


class InodeStore:
    """Node id -> :class:`Inode`, with lookup counts and the (dev, ino, mnt_id) index."""

    def __init__(self, root_fd: int, root_st: Any, root_mnt_id: int = 0) -> None:
        """Take ownership of ``root_fd`` (an O_PATH descriptor of the shared folder)."""
        self._lock = threading.Lock()
        self._ids = itertools.count(ROOT_ID + 1)
        key = InodeKey(root_st.st_dev, root_st.st_ino, root_mnt_id)
        # A count of 2 for the root, as libfuse and the Rust daemon start it.
        self._root = Inode(ROOT_ID, root_fd, key, stat.S_IFMT(root_st.st_mode), 2)
        self._inodes: dict[int, Inode] = {ROOT_ID: self._root}
        self._by_key: dict[InodeKey, int] = {key: ROOT_ID}

    @classmethod
    def open_shared_dir(cls, path: str) -> InodeStore:
        """A store whose root is the folder ``path`` (opened O_PATH, following a symlink in
        the user-given path; the folder itself must be a folder).

        :raises OSError: ``path`` cannot be opened or is not a folder.
        """
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.stat(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, st)

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

    def claim_or_insert(self, fd: int, st: Any, mnt_id: int = 0) -> Inode:
        """Count one more lookup of the inode ``fd`` describes (``st`` is its ``fstat``).

        Takes ownership of ``fd``: it becomes the new inode's descriptor, or it is closed when
        the inode is already in the table (the guest then gets the node id it already knows).
        """
        key = InodeKey(st.st_dev, st.st_ino, mnt_id)
        with self._lock:
            nodeid = self._by_key.get(key)
            if nodeid is None:
                inode = Inode(next(self._ids), fd, key, stat.S_IFMT(st.st_mode), 1)
                self._inodes[inode.nodeid] = inode
                self._by_key[key] = inode.nodeid
                return inode
            inode = self._inodes[nodeid]
            inode.refcount += 1
        os.close(fd)
        return inode

    def forget(self, nodeid: int, nlookup: int) -> None:
        """Take back ``nlookup`` lookups of ``nodeid``, saturating at zero.  Unknown ids are
        ignored: FORGET has no reply to carry an error."""
        with self._lock:
            self._forget_locked(nodeid, nlookup)

    def forget_many(self, forgets: Iterable[tuple[int, int]]) -> None:
        """BATCH_FORGET: :meth:`forget` for each ``(nodeid, nlookup)`` pair under one lock."""
        with self._lock:
            for nodeid, nlookup in forgets:
                self._forget_locked(nodeid, nlookup)

    def _forget_locked(self, nodeid: int, nlookup: int) -> None:
        inode = self._inodes.get(nodeid)
        if inode is None:
            return
        inode.refcount = max(0, inode.refcount - nlookup)
        if inode.refcount == 0 and nodeid != ROOT_ID:
            del self._inodes[nodeid]
            if self._by_key.get(inode.key) == nodeid:
                del self._by_key[inode.key]

    def refcount(self, nodeid: int) -> int:
        """The guest's lookup count of ``nodeid`` (0 when it is not in the table)."""
        inode = self._inodes.get(nodeid)
        return 0 if inode is None else inode.refcount

    def clear(self) -> None:
        """Forget every inode but the root, as DESTROY and a second INIT require."""
        with self._lock:
            self._inodes = {ROOT_ID: self._root}
            self._by_key = {self._root.key: ROOT_ID}
            self._root.refcount = 2

    def close(self) -> None:
        """Drop every inode, the root included (the daemon stops)."""
        with self._lock:
            self._inodes = {}
            self._by_key = {}

    def snapshot(self) -> tuple[list[Inode], int]:
        """Every inode and the next node id, consistent with each other (migration saves them)."""
        with self._lock:
            next_id = next(self._ids)
            self._ids = itertools.count(next_id)
            return list(self._inodes.values()), next_id

    def adopt(self, nodeid: int, fd: int, st: Any, refcount: int, mnt_id: int = 0) -> Inode:
        """Insert an inode under the node id a migration source gave it (takes ``fd``)."""
        key = InodeKey(st.st_dev, st.st_ino, mnt_id)
        inode = Inode(nodeid, fd, key, stat.S_IFMT(st.st_mode), refcount)
        with self._lock:
            self._inodes[nodeid] = inode
            self._by_key.setdefault(key, nodeid)
        return inode

    def continue_ids_from(self, next_id: int) -> None:
        """Never hand out a node id below ``next_id`` (the migration source's counter)."""
        with self._lock:
            self._ids = itertools.count(max(next_id, ROOT_ID + 1))

    def __len__(self) -> int:
        return len(self._inodes)

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._inodes
