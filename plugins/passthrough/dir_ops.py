"""Creating, linking, removing, and reading folders: MKDIR, MKNOD, SYMLINK, LINK, UNLINK, RMDIR,
RENAME(2), OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR.

Every name is one validated component used relative to its parent's descriptor.  Creation runs
with the caller's uid and gid (per thread), so the host kernel makes the caller the owner and
checks the parent folder's permissions as the caller.

READDIR offsets are the host file system's ``d_off`` cookies: the guest hands back the offset of
the last entry it received and the next READDIR seeks there (under the handle's lock, since the
descriptor's position is shared) before calling getdents64.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError
from virtiofsd.fuse.dirents import DirentBuffer
from virtiofsd.fuse.replies import EMPTY
from virtiofsd.sys import ffi
from virtiofsd.sys.dirents64 import Dirent64, parse_dirents64
from virtiofsd_plugins.passthrough.creation import as_creator, label_new_node, security_context
from virtiofsd_plugins.passthrough.names import check_new_name
from virtiofsd_plugins.passthrough.state import PassthroughState

#: Upper bound of one getdents64 buffer: the guest's size is untrusted, so a big READDIR is
#: served in several calls rather than with one huge allocation.
GETDENTS_CHUNK = 32 * 1024
#: Large enough for one record with a 255-byte name (getdents64 fails with EINVAL otherwise).
_GETDENTS_MIN = 512
#: The getdents64 buffer for a READDIRPLUS reply of ``size`` bytes is ``size * 11 // 16``: a
#: ``linux_dirent64`` record is at most 280/408 of the ``fuse_direntplus`` record of the same
#: name (names of 253 to 255 bytes; shorter ones less), so that many bytes of host records hold
#: every entry the reply can, and the kernel reads fewer entries that would not be sent.  A
#: READDIR reply needs ``size`` bytes (a ``fuse_dirent`` is never smaller than the host record).
#: Names longer than NAME_MAX only cost another getdents64 call.
_PLUS_NUMERATOR, _PLUS_DENOMINATOR = 11, 16
_MAX_OFFSET = (1 << 63) - 1
_OUT_OF_DESCRIPTORS = (errno.ENFILE, errno.EMFILE)
_DOTS = (b".", b"..")


def decode_rdev(rdev: int) -> int:
    """The guest's device number (the kernel's 32-bit ``new_encode_dev`` form: minor bits 0-7
    and 20-31, major bits 8-19) as the host's ``dev_t``."""
    major = (rdev >> 8) & 0xFFF
    minor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def host_records(fd: int, offset: int, size: int) -> Iterator[memoryview]:
    """The ``linux_dirent64`` records of the folder ``fd`` from the position ``offset``, one
    getdents64 call of up to ``size`` bytes at a time.  Each view is of a buffer the next call
    fills again: parse it before asking for the next.  The caller holds the handle's lock while
    it iterates."""
    if not 0 <= offset <= _MAX_OFFSET:
        raise FuseError(errno.EINVAL, f"directory offset {offset} out of range")
    os.lseek(fd, offset, os.SEEK_SET)
    buffer = bytearray(min(max(size, _GETDENTS_MIN), GETDENTS_CHUNK))
    while records := ffi.getdents64(fd, buffer):
        yield records


def host_entries(fd: int, offset: int, size: int) -> Iterator[Dirent64]:
    """The entries of the folder ``fd`` from the position ``offset`` (see :func:`host_records`)."""
    for records in host_records(fd, offset, size):
        yield from parse_dirents64(records)


class DirOps:
    """The folder operations of one passthrough file system."""

    def __init__(self, state: PassthroughState) -> None:
        self._state = state
        self._inodes = state.inodes
        self._handles = state.handles

    # --- Creating ------------------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_mkdir(self, req: Any, parent: int, name: bytes, mode: int,
                             umask: int) -> Any:
        check_new_name(name)
        parent_inode = self._inodes.get(parent)
        context = security_context(self._state, req)
        parent_fd = parent_inode.fd  # before the uid switch, which drops CAP_DAC_READ_SEARCH
        with as_creator(self._state, req, umask):
            os.mkdir(name, mode & 0o7777, dir_fd=parent_fd)
        return self._labelled_entry(req, parent_inode, name, context, is_dir=True)

    @hookimpl
    def virtiofsd_fuse_mknod(self, req: Any, parent: int, name: bytes, mode: int, rdev: int,
                             umask: int) -> Any:
        check_new_name(name)
        parent_inode = self._inodes.get(parent)
        context = security_context(self._state, req)
        parent_fd = parent_inode.fd  # before the uid switch, which drops CAP_DAC_READ_SEARCH
        with as_creator(self._state, req, umask):
            # The guest's u32 mode as the kernel's 16-bit umode_t (os.mknod takes a C int).
            os.mknod(name, mode & 0xFFFF, decode_rdev(rdev), dir_fd=parent_fd)
        return self._labelled_entry(req, parent_inode, name, context, is_dir=False)

    @hookimpl
    def virtiofsd_fuse_symlink(self, req: Any, parent: int, name: bytes, target: bytes) -> Any:
        check_new_name(name)
        if b"\0" in target:
            raise FuseError(errno.EINVAL, "symlink target holds a NUL byte")
        parent_inode = self._inodes.get(parent)
        context = security_context(self._state, req)
        parent_fd = parent_inode.fd  # before the uid switch, which drops CAP_DAC_READ_SEARCH
        with as_creator(self._state, req, None):
            os.symlink(target, name, dir_fd=parent_fd)
        return self._labelled_entry(req, parent_inode, name, context, is_dir=False)

    def _labelled_entry(self, req: Any, parent_inode: Any, name: bytes,
                        context: tuple[bytes, bytes] | None, is_dir: bool) -> Any:
        """The entry of the node just created, labelled first when the guest sent a security
        context (the node is removed again when that fails)."""
        path_fd = label_new_node(self._state, req, parent_inode.fd, name, context, is_dir)
        return self._state.entry_for_fd(req, parent_inode, path_fd)

    @hookimpl
    def virtiofsd_fuse_link(self, req: Any, nodeid: int, newparent: int, newname: bytes) -> Any:
        """linkat of the inode's magic link with AT_SYMLINK_FOLLOW: links the inode itself
        (a symlink stays a symlink) without CAP_DAC_READ_SEARCH, which AT_EMPTY_PATH needs."""
        check_new_name(newname)
        inode = self._inodes.get(nodeid)
        parent_inode = self._inodes.get(newparent)
        path_fd = inode.fd  # held while its number is in use (see PathFd)
        os.link(str(path_fd), newname, src_dir_fd=self._state.proc_self_fd,
                dst_dir_fd=parent_inode.fd, follow_symlinks=True)
        return self._state.lookup(req, parent_inode, newname)

    # --- Removing and renaming -----------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_unlink(self, req: Any, parent: int, name: bytes) -> Any:
        check_new_name(name)
        os.unlink(name, dir_fd=self._inodes.get(parent).fd)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_rmdir(self, req: Any, parent: int, name: bytes) -> Any:
        check_new_name(name)
        os.rmdir(name, dir_fd=self._inodes.get(parent).fd)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_rename(self, req: Any, parent: int, name: bytes, newparent: int,
                              newname: bytes, flags: int) -> Any:
        check_new_name(name)
        check_new_name(newname)
        old_dir = self._inodes.get(parent)
        new_dir = self._inodes.get(newparent)
        ffi.renameat2(old_dir.fd, name, new_dir.fd, newname, flags)
        return EMPTY

    # --- Reading folders -----------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_opendir(self, req: Any, nodeid: int, flags: int) -> Any:
        return self._state.open_handle(req, self._inodes.get(nodeid), flags, directory=True)

    @hookimpl
    def virtiofsd_fuse_readdir(self, req: Any, nodeid: int, fh: int, offset: int,
                               size: int) -> Any:
        if size == 0:
            return EMPTY
        handle = self._handles.get(fh, nodeid)
        out = DirentBuffer(size)
        with handle.lock:
            for records in host_records(handle.fd, offset, size):
                if not out.add_host_records(records):
                    break
        return out.getvalue()

    @hookimpl
    def virtiofsd_fuse_readdirplus(self, req: Any, nodeid: int, fh: int, offset: int,
                                   size: int) -> Any:
        """READDIR plus a LOOKUP of every entry but ``.`` and ``..``.

        An entry is looked up only once its record is known to fit, so every lookup made is
        sent and counts (the guest learns each node id it is given).  An entry removed between
        getdents64 and its lookup is skipped; one the daemon has no descriptor left for is
        listed without attributes.
        """
        if size == 0:
            return EMPTY
        handle = self._handles.get(fh, nodeid)
        folder = self._inodes.get(nodeid)
        lookup = self._state.lookup
        out = DirentBuffer(size)
        getdents_size = size * _PLUS_NUMERATOR // _PLUS_DENOMINATOR
        with handle.lock:
            for ino, entry_offset, dtype, name in host_entries(handle.fd, offset, getdents_size):
                if not out.fits_plus(name):
                    break
                if name in _DOTS:
                    out.add_plus(None, ino, entry_offset, dtype, name)
                    continue
                try:
                    reply = lookup(req, folder, name)
                except (OSError, FuseError) as exc:
                    if exc.errno == errno.ENOENT:
                        continue
                    if exc.errno in _OUT_OF_DESCRIPTORS:
                        # The name without attributes (node id 0: the kernel then treats it as
                        # a plain entry), so that a spent descriptor budget never shortens a
                        # listing; the guest's own LOOKUP of it then meets ENFILE visibly.
                        out.add_plus(None, ino, entry_offset, dtype, name)
                        continue
                    if len(out):
                        break
                    raise
                out.add_plus(reply, ino, entry_offset, dtype, name)
        return out.getvalue()

    @hookimpl
    def virtiofsd_fuse_releasedir(self, req: Any, nodeid: int, fh: int) -> Any:
        self._handles.remove(fh, nodeid)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_fsyncdir(self, req: Any, nodeid: int, fh: int, datasync: bool) -> Any:
        fd = self._handles.get(fh, nodeid).fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
        return EMPTY
