"""A tiny in-memory file system plugin, to drive the FUSE router without touching the host.

It implements enough hooks for a mount's everyday life (lookup, getattr, mkdir, create, open,
read, write, readdir, unlink, rename, forget, statfs ...) and records every call in ``calls``
as ``(hook short name, kwargs without req)``, so a test can check what the router decoded.
Operations it does not implement stay unanswered (the router replies ENOSYS).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.dirents import DirentBuffer
from virtiofsd.fuse.replies import (EMPTY, AttrReply, CreateReply, EntryReply, OpenReply,
                                    StatfsReply)

TIMEOUT = 1.0
#: Files grow no larger (EFBIG, as a host file system answers past its limit): a guest asking for
#: an exabyte file must not make the fake allocate it.
MAX_FILE_SIZE = 1 << 24


class Node:
    """One file, folder or symlink."""

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0) -> None:
        now = time.time_ns()
        self.st_ino = ino
        self.st_mode = mode
        self.st_uid = uid
        self.st_gid = gid
        self.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        self.st_rdev = 0
        self.st_blksize = 4096
        self.st_atime_ns = self.st_mtime_ns = self.st_ctime_ns = now
        self.data = bytearray()
        self.target = b""
        self.children: dict[bytes, int] = {}
        self.lookups = 0

    @property
    def st_size(self) -> int:
        if stat.S_ISLNK(self.st_mode):
            return len(self.target)
        return len(self.data)

    @property
    def st_blocks(self) -> int:
        return (self.st_size + 511) // 512


class MemFs:
    """The plugin object: register an instance with ``make_plugin_manager(plugins=[...])``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sessions: list[Any] = []
        self.destroyed = 0
        self._reset()

    def _reset(self) -> None:
        self.nodes: dict[int, Node] = {abi.ROOT_ID: Node(abi.ROOT_ID, stat.S_IFDIR | 0o755)}
        self.next_ino = abi.ROOT_ID + 1
        self.handles: dict[int, int] = {}
        self.next_fh = 1

    def _record(self, hook: str, /, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))

    def _node(self, nodeid: int) -> Node:
        try:
            return self.nodes[nodeid]
        except KeyError:
            raise FuseError(errno.EBADF, f"unknown node id {nodeid}") from None

    def _folder(self, nodeid: int) -> Node:
        node = self._node(nodeid)
        if not stat.S_ISDIR(node.st_mode):
            raise FuseError(errno.ENOTDIR)
        return node

    def _entry(self, ino: int) -> EntryReply:
        node = self.nodes[ino]
        node.lookups += 1
        return EntryReply(ino, node, TIMEOUT, TIMEOUT)

    def _new(self, req: Any, parent: int, name: bytes, mode: int) -> EntryReply:
        folder = self._folder(parent)
        if not name or b"/" in name or name in (b".", b".."):
            raise FuseError(errno.EINVAL, f"bad name {name!r}")
        if name in folder.children:
            raise FuseError(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = Node(ino, mode, req.uid, req.gid)
        folder.children[name] = ino
        return self._entry(ino)

    def _fh(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    def _open_node(self, fh: int) -> Node:
        try:
            return self.nodes[self.handles[fh]]
        except KeyError:
            raise FuseError(errno.EBADF, f"unknown handle {fh}") from None

    # --- session --------------------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_init(self, req: Any, session: Any) -> bool:
        with self.lock:
            self.sessions.append(session)
            self._reset()
        return True

    @hookimpl
    def virtiofsd_fuse_destroy(self, req: Any) -> bool:
        with self.lock:
            self.destroyed += 1
            self._reset()
        return True

    # --- names and attributes -------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_lookup(self, req: Any, parent: int, name: bytes) -> EntryReply:
        with self.lock:
            self._record("lookup", parent=parent, name=name)
            ino = self._folder(parent).children.get(name)
            if ino is None:
                raise FuseError(errno.ENOENT)
            return self._entry(ino)

    @hookimpl
    def virtiofsd_fuse_forget(self, req: Any, nodeid: int, nlookup: int) -> bool:
        with self.lock:
            self._record("forget", nodeid=nodeid, nlookup=nlookup)
            node = self.nodes.get(nodeid)
            if node is not None:
                node.lookups = max(node.lookups - nlookup, 0)
        return True

    @hookimpl
    def virtiofsd_fuse_batch_forget(self, req: Any, forgets: Any) -> bool:
        with self.lock:
            self._record("batch_forget", forgets=list(forgets))
            for nodeid, nlookup in forgets:
                node = self.nodes.get(nodeid)
                if node is not None:
                    node.lookups = max(node.lookups - nlookup, 0)
        return True

    @hookimpl
    def virtiofsd_fuse_getattr(self, req: Any, nodeid: int, fh: int | None) -> AttrReply:
        with self.lock:
            self._record("getattr", nodeid=nodeid, fh=fh)
            return AttrReply(self._node(nodeid), TIMEOUT)

    @hookimpl
    def virtiofsd_fuse_setattr(self, req: Any, nodeid: int, valid: int, fh: int | None, mode: int,
                               uid: int, gid: int, size: int, atime_ns: int,
                               mtime_ns: int) -> AttrReply:
        with self.lock:
            self._record("setattr", nodeid=nodeid, valid=valid, fh=fh, mode=mode, uid=uid,
                         gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns)
            node = self._node(nodeid)
            if valid & abi.FATTR_MODE:
                node.st_mode = stat.S_IFMT(node.st_mode) | stat.S_IMODE(mode)
            if valid & abi.FATTR_SIZE:
                if size > MAX_FILE_SIZE:
                    raise FuseError(errno.EFBIG, f"size {size}")
                del node.data[size:]
                node.data.extend(bytes(size - len(node.data)))
            if valid & abi.FATTR_ATIME:
                node.st_atime_ns = atime_ns
            if valid & abi.FATTR_MTIME:
                node.st_mtime_ns = mtime_ns
            return AttrReply(node, TIMEOUT)

    @hookimpl
    def virtiofsd_fuse_readlink(self, req: Any, nodeid: int) -> bytes:
        with self.lock:
            node = self._node(nodeid)
            if not stat.S_ISLNK(node.st_mode):
                raise FuseError(errno.EINVAL)
            return node.target

    @hookimpl
    def virtiofsd_fuse_statfs(self, req: Any, nodeid: int) -> StatfsReply:
        result = os.statvfs_result((4096, 4096, 1000, 500, 500, 100, 50, 50, 0, 255))
        return StatfsReply(result)

    # --- creating, linking, removing ------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_mkdir(self, req: Any, parent: int, name: bytes, mode: int,
                             umask: int) -> EntryReply:
        with self.lock:
            self._record("mkdir", parent=parent, name=name, mode=mode, umask=umask)
            return self._new(req, parent, name, stat.S_IFDIR | stat.S_IMODE(mode))

    @hookimpl
    def virtiofsd_fuse_mknod(self, req: Any, parent: int, name: bytes, mode: int, rdev: int,
                             umask: int) -> EntryReply:
        with self.lock:
            self._record("mknod", parent=parent, name=name, mode=mode, rdev=rdev, umask=umask)
            return self._new(req, parent, name, mode)

    @hookimpl
    def virtiofsd_fuse_symlink(self, req: Any, parent: int, name: bytes,
                               target: bytes) -> EntryReply:
        with self.lock:
            self._record("symlink", parent=parent, name=name, target=target)
            entry = self._new(req, parent, name, stat.S_IFLNK | 0o777)
            self.nodes[entry.nodeid].target = target
            return entry

    @hookimpl
    def virtiofsd_fuse_unlink(self, req: Any, parent: int, name: bytes) -> bytes:
        with self.lock:
            self._record("unlink", parent=parent, name=name)
            folder = self._folder(parent)
            if name not in folder.children:
                raise FuseError(errno.ENOENT)
            del folder.children[name]
            return EMPTY

    @hookimpl
    def virtiofsd_fuse_rename(self, req: Any, parent: int, name: bytes, newparent: int,
                              newname: bytes, flags: int) -> bytes:
        with self.lock:
            self._record("rename", parent=parent, name=name, newparent=newparent,
                         newname=newname, flags=flags)
            source, target = self._folder(parent), self._folder(newparent)
            if name not in source.children:
                raise FuseError(errno.ENOENT)
            target.children[newname] = source.children.pop(name)
            return EMPTY

    # --- files and folders ----------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_create(self, req: Any, parent: int, name: bytes, mode: int, flags: int,
                              umask: int, open_flags: int) -> CreateReply:
        with self.lock:
            self._record("create", parent=parent, name=name, mode=mode, flags=flags,
                         umask=umask, open_flags=open_flags)
            entry = self._new(req, parent, name, stat.S_IFREG | stat.S_IMODE(mode))
            return CreateReply(entry, OpenReply(self._fh(entry.nodeid)))

    @hookimpl
    def virtiofsd_fuse_open(self, req: Any, nodeid: int, flags: int,
                            open_flags: int) -> OpenReply:
        with self.lock:
            self._record("open", nodeid=nodeid, flags=flags, open_flags=open_flags)
            node = self._node(nodeid)
            if not stat.S_ISREG(node.st_mode):
                raise FuseError(errno.EISDIR if stat.S_ISDIR(node.st_mode) else errno.EINVAL)
            if flags & os.O_TRUNC:
                node.data.clear()
            return OpenReply(self._fh(nodeid))

    @hookimpl
    def virtiofsd_fuse_opendir(self, req: Any, nodeid: int, flags: int) -> OpenReply:
        with self.lock:
            self._record("opendir", nodeid=nodeid, flags=flags)
            self._folder(nodeid)
            return OpenReply(self._fh(nodeid))

    @hookimpl
    def virtiofsd_fuse_read(self, req: Any, nodeid: int, fh: int, offset: int, size: int,
                            flags: int, sink: Any) -> int:
        """Copies straight into the guest's buffers, as the passthrough plugin's preadv does."""
        with self.lock:
            self._record("read", nodeid=nodeid, fh=fh, offset=offset, size=size, flags=flags)
            data = memoryview(self._open_node(fh).data)[offset:offset + size]
            done = 0
            for view in sink.buffers(len(data)):
                view[:] = data[done:done + len(view)]
                done += len(view)
            return done

    @hookimpl
    def virtiofsd_fuse_write(self, req: Any, nodeid: int, fh: int, offset: int, size: int,
                             write_flags: int, flags: int, data: Any) -> int:
        with self.lock:
            self._record("write", nodeid=nodeid, fh=fh, offset=offset, size=size,
                         write_flags=write_flags, flags=flags, pieces=len(data))
            payload = b"".join(data)
            node = self._open_node(fh)
            if offset + len(payload) > MAX_FILE_SIZE:
                raise FuseError(errno.EFBIG, f"write up to {offset + len(payload)}")
            if len(node.data) < offset:
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset:offset + len(payload)] = payload
            return len(payload)

    @hookimpl
    def virtiofsd_fuse_flush(self, req: Any, nodeid: int, fh: int, lock_owner: int) -> bytes:
        self._record("flush", nodeid=nodeid, fh=fh, lock_owner=lock_owner)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_release(self, req: Any, nodeid: int, fh: int, flags: int,
                               release_flags: int, lock_owner: int) -> bytes:
        with self.lock:
            self._record("release", nodeid=nodeid, fh=fh, flags=flags,
                         release_flags=release_flags, lock_owner=lock_owner)
            self.handles.pop(fh, None)
            return EMPTY

    @hookimpl
    def virtiofsd_fuse_releasedir(self, req: Any, nodeid: int, fh: int) -> bytes:
        with self.lock:
            self.handles.pop(fh, None)
            return EMPTY

    @hookimpl
    def virtiofsd_fuse_readdir(self, req: Any, nodeid: int, fh: int, offset: int,
                               size: int) -> bytes:
        with self.lock:
            self._record("readdir", nodeid=nodeid, fh=fh, offset=offset, size=size)
            folder = self._open_node(fh)
            entries = [(b".", folder.st_ino, folder.st_mode), (b"..", abi.ROOT_ID, stat.S_IFDIR)]
            entries += [(name, ino, self.nodes[ino].st_mode)
                        for name, ino in sorted(folder.children.items())]
            buffer = DirentBuffer(size)
            for index, (name, ino, mode) in enumerate(entries[offset:], start=offset + 1):
                if not buffer.add(ino, index, stat.S_IFMT(mode) >> 12, name):
                    break
            return buffer.getvalue()
