"""Open files: OPEN, CREATE, TMPFILE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK,
COPY_FILE_RANGE, SYNCFS.

READ and WRITE move data straight between the host file and guest memory (``os.preadv`` into
the reply sink's views, ``os.pwritev`` from the request's views): no intermediate copy, no
logging, no extra system call.

O_APPEND never reaches the host descriptor.  A write the guest marks WRITE_CACHE (write-back
cache or mmap) carries the exact offset the guest computed and must land there; any other write
of a file the guest opened O_APPEND is appended atomically on the host with RWF_APPEND, which
keeps appends from several guests sharing the folder intact.

With HANDLE_KILLPRIV_V2 the guest leaves the clearing of setuid/setgid to the daemon: an OPEN
with OPEN_KILL_SUIDGID (O_TRUNC) and a WRITE with WRITE_KILL_SUIDGID clear them as Linux does
for a local file (:mod:`virtiofsd_plugins.passthrough.killpriv`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EMPTY, CreateReply, LseekReply, OpenReply, WriteReply
from virtiofsd.sys import ffi
from virtiofsd_plugins.passthrough.creation import as_creator, security_context
from virtiofsd_plugins.passthrough.killpriv import (clearing_suidgid_of_fd,
                                                    clearing_suidgid_of_path_fd, kills_suidgid)
from virtiofsd_plugins.passthrough.locks import LockOps
from virtiofsd_plugins.passthrough.names import check_new_name
from virtiofsd_plugins.passthrough.state import PassthroughState

#: The kernel's cap on one read/write/copy (MAX_RW_COUNT); it also keeps the count in the u32
#: of fuse_write_out.
MAX_RW_COUNT = 0x7FFFF000
_MAX_OFFSET = (1 << 63) - 1
_KILLPRIV_V2 = int(abi.InitFlag.HANDLE_KILLPRIV_V2)
_WRITE_KILL_SUIDGID = abi.WRITE_KILL_SUIDGID
#: Flags that create a named file; an O_TMPFILE open must not carry them.
_NAMED_CREATION_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_TRUNC
#: What openat(O_TMPFILE) answers where the file system cannot make unnamed files.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)

_WHENCES = frozenset((os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE))

class FileOps:
    """The open-file operations of one passthrough file system.

    Closing a file ends its locks: FLUSH and RELEASE tell the lock operations first (a direct
    call, so each of these hooks has one implementation and the router calls it directly).
    """

    def __init__(self, state: PassthroughState, locks: LockOps) -> None:
        self._state = state
        self._inodes = state.inodes
        self._handles = state.handles
        self._locks = locks

    @hookimpl
    def virtiofsd_fuse_open(self, req: Any, nodeid: int, flags: int, open_flags: int) -> Any:
        """Reopen a regular file (or folder); any other type is refused with EBADF.  Creation
        flags belong to CREATE: O_CREAT or O_TMPFILE here is EINVAL, as from the C daemon."""
        if flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE:
            raise FuseError(errno.EINVAL, "OPEN with O_CREAT or O_TMPFILE")
        return self._open_file(req, self._inodes.get(nodeid), flags, open_flags)

    def _open_file(self, req: Any, inode: Any, flags: int, open_flags: int) -> Any:
        """Open ``inode`` for the guest; an O_TRUNC open flagged OPEN_KILL_SUIDGID clears
        setuid/setgid first (the flag alone changes nothing: no guest sends it without
        O_TRUNC)."""
        state = self._state
        if not (flags & os.O_TRUNC and kills_suidgid(req, open_flags & abi.OPEN_KILL_SUIDGID)):
            return state.open_handle(req, inode, flags, directory=False)
        with clearing_suidgid_of_path_fd(inode.fd, state.proc_self_fd):
            return state.open_handle(req, inode, flags, directory=False)

    @hookimpl
    def virtiofsd_fuse_create(self, req: Any, parent: int, name: bytes, mode: int, flags: int,
                              umask: int, open_flags: int) -> Any:
        """Create with O_CREAT|O_EXCL always, as the caller, so an existing file is never
        opened by this path.  When the name exists and the guest did not ask for O_EXCL, the
        file is looked up and opened the normal way (regular files only)."""
        check_new_name(name)
        state = self._state
        parent_inode = self._inodes.get(parent)
        host_flags = (state.host_open_flags(flags, req.session.flags)
                      | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
        context = security_context(state, req)
        try:
            parent_fd = parent_inode.fd  # before the uid switch, which drops CAP_DAC_READ_SEARCH
            if context is None:
                with as_creator(self._state, req, umask):
                    fd = os.open(name, host_flags, mode & 0o7777, dir_fd=parent_fd)
            else:
                fd = self._create_labelled(req, parent_fd, name, host_flags, mode & 0o7777,
                                           umask, context)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            return self._open_existing(req, parent_inode, name, flags, open_flags)
        return self._created(req, parent_inode, fd)

    @hookimpl
    def virtiofsd_fuse_tmpfile(self, req: Any, parent: int, name: bytes, mode: int, flags: int,
                               umask: int, open_flags: int) -> Any:
        """An unnamed file in ``parent`` (open(2) with O_TMPFILE), created as the caller; the
        guest may give it a name later with LINK.  ``name`` is the kernel's placeholder."""
        state = self._state
        parent_inode = self._inodes.get(parent)
        host_flags = (state.host_open_flags(flags & ~os.O_TMPFILE, req.session.flags)
                      | flags & os.O_EXCL | os.O_TMPFILE)
        parent_fd = parent_inode.fd  # before the uid switch, which drops CAP_DAC_READ_SEARCH
        with as_creator(state, req, umask):
            fd = os.open(".", host_flags, mode & 0o7777, dir_fd=parent_fd)
        return self._created(req, parent_inode, fd)

    def _created(self, req: Any, parent_inode: Any, fd: int) -> CreateReply:
        """Count a lookup of the file just created and opened as ``fd``, and give it a handle."""
        state = self._state
        try:
            path_fd = os.open(str(fd), os.O_PATH | os.O_CLOEXEC, dir_fd=state.proc_self_fd)
            entry = state.entry_for_fd(req, parent_inode, path_fd)
        except BaseException:
            os.close(fd)
            raise
        fh = self._handles.insert(entry.nodeid, fd)
        return CreateReply(entry, OpenReply(fh, state.file_open_flags))

    def _create_labelled(self, req: Any, parent_fd: int, name: bytes, host_flags: int,
                         mode: int, umask: int, context: tuple[bytes, bytes]) -> int:
        """Create ``name`` already carrying its security label: an unnamed O_TMPFILE is
        labelled, then linked into place (EEXIST when the name appeared meanwhile).  Where the
        file system has no O_TMPFILE the file is created, labelled, and removed again when
        labelling fails.  An O_TMPFILE must be writable, so a read-only create gets a
        read-write handle (the guest kernel still enforces its own open mode)."""
        access = host_flags & os.O_ACCMODE
        tmp_flags = ((host_flags & ~(_NAMED_CREATION_FLAGS | os.O_ACCMODE)) | os.O_TMPFILE
                     | (os.O_RDWR if access == os.O_RDONLY else access))
        try:
            with as_creator(self._state, req, umask):
                fd = os.open(".", tmp_flags, mode, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            return self._create_then_label(req, parent_fd, name, host_flags, mode, umask,
                                           context)
        try:
            os.setxattr(fd, context[0], context[1])
            os.link(str(fd), name, src_dir_fd=self._state.proc_self_fd,
                    dst_dir_fd=parent_fd, follow_symlinks=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _create_then_label(self, req: Any, parent_fd: int, name: bytes, host_flags: int,
                           mode: int, umask: int, context: tuple[bytes, bytes]) -> int:
        with as_creator(self._state, req, umask):
            fd = os.open(name, host_flags, mode, dir_fd=parent_fd)
        try:
            os.setxattr(fd, context[0], context[1])
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=parent_fd)
            raise
        return fd

    def _open_existing(self, req: Any, parent_inode: Any, name: bytes, flags: int,
                       open_flags: int) -> Any:
        state = self._state
        entry = state.lookup(req, parent_inode, name)
        try:
            opened = self._open_file(req, self._inodes.get(entry.nodeid), flags, open_flags)
        except BaseException:
            self._inodes.forget(entry.nodeid, 1)
            raise
        return CreateReply(entry, opened)

    @hookimpl
    def virtiofsd_fuse_read(self, req: Any, nodeid: int, fh: int, offset: int, size: int,
                            flags: int, sink: Any) -> Any:
        fd = self._handles.get(fh, nodeid).fd
        if size == 0:
            return 0
        try:
            return os.preadv(fd, sink.buffers(size), offset)
        except OverflowError:
            raise FuseError(errno.EINVAL, f"read offset {offset} out of range") from None

    @hookimpl
    def virtiofsd_fuse_write(self, req: Any, nodeid: int, fh: int, offset: int, size: int,
                             write_flags: int, flags: int, data: Sequence[memoryview]) -> Any:
        fd = self._handles.get(fh, nodeid).fd
        append = flags & os.O_APPEND and not write_flags & abi.WRITE_CACHE
        try:
            if write_flags & _WRITE_KILL_SUIDGID and req.session.flags & _KILLPRIV_V2:
                with clearing_suidgid_of_fd(True, fd):
                    return os.pwritev(fd, data, offset, os.RWF_APPEND if append else 0)
            return os.pwritev(fd, data, offset, os.RWF_APPEND if append else 0)
        except OverflowError:
            raise FuseError(errno.EINVAL, f"write offset {offset} out of range") from None

    @hookimpl
    def virtiofsd_fuse_flush(self, req: Any, nodeid: int, fh: int, lock_owner: int) -> Any:
        """The owner's POSIX locks go, then close(2) of a duplicate: what the guest's close
        does to its file, the host's file system sees (NFS flushes, for one), while the handle
        stays open."""
        self._locks.owner_closed(nodeid, lock_owner)
        os.close(os.dup(self._handles.get(fh, nodeid).fd))
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_release(self, req: Any, nodeid: int, fh: int, flags: int,
                               release_flags: int, lock_owner: int) -> Any:
        self._locks.handle_released(nodeid, fh, release_flags)
        self._handles.remove(fh, nodeid)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_fsync(self, req: Any, nodeid: int, fh: int, datasync: bool) -> Any:
        fd = self._handles.get(fh, nodeid).fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_fallocate(self, req: Any, nodeid: int, fh: int, offset: int, length: int,
                                 mode: int) -> Any:
        fd = self._handles.get(fh, nodeid).fd
        if not (0 <= offset <= _MAX_OFFSET and 0 <= length <= _MAX_OFFSET):
            raise FuseError(errno.EINVAL, f"fallocate range {offset}+{length} out of range")
        ffi.fallocate(fd, mode, offset, length)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_lseek(self, req: Any, nodeid: int, fh: int, offset: int,
                             whence: int) -> Any:
        handle = self._handles.get(fh, nodeid)
        if not 0 <= offset <= _MAX_OFFSET:
            raise FuseError(errno.EINVAL, f"lseek offset {offset} out of range")
        if whence not in _WHENCES:  # the kernel's answer, before a u32 overflows os.lseek
            raise FuseError(errno.EINVAL, f"lseek whence {whence}")
        with handle.lock:
            return LseekReply(os.lseek(handle.fd, offset, whence))

    @hookimpl
    def virtiofsd_fuse_copy_file_range(self, req: Any, nodeid: int, fh_in: int, off_in: int,
                                       nodeid_out: int, fh_out: int, off_out: int, length: int,
                                       flags: int) -> Any:
        """copy_file_range(2) between two open handles; the kernel defines no flags yet, so
        any is EINVAL, as the host would answer."""
        fd_in = self._handles.get(fh_in, nodeid).fd
        fd_out = self._handles.get(fh_out, nodeid_out).fd
        if flags:
            raise FuseError(errno.EINVAL, f"copy_file_range flags {flags:#x}")
        if not (0 <= off_in <= _MAX_OFFSET and 0 <= off_out <= _MAX_OFFSET):
            raise FuseError(errno.EINVAL, "copy_file_range offset out of range")
        copied = os.copy_file_range(fd_in, fd_out, min(length, MAX_RW_COUNT), off_in, off_out)
        return WriteReply(copied)

    @hookimpl
    def virtiofsd_fuse_syncfs(self, req: Any, nodeid: int) -> Any:
        """syncfs(2) needs a real open descriptor (O_PATH ones are refused), so the inode is
        reopened read-only: regular files and folders only, as in the Rust daemon."""
        fd = self._state.reopen(self._inodes.get(nodeid),
                                os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ffi.syncfs(fd)
        finally:
            os.close(fd)
        return EMPTY
