"""Names and attributes: INIT/DESTROY, LOOKUP, FORGET, BATCH_FORGET, GETATTR, SETATTR, READLINK,
ACCESS, STATFS.

GETATTR and LOOKUP are the hottest requests of a guest walking a tree: GETATTR is one ``fstat``
(cheaper from Python than ``statx``, whose mount id only LOOKUP needs), LOOKUP one ``openat2``
and one ``statx``, and neither logs.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EMPTY, AttrReply, StatfsReply
from virtiofsd.sys import ffi
from virtiofsd_plugins.passthrough.killpriv import clearing_suidgid_of_fd, kills_suidgid
from virtiofsd_plugins.passthrough.names import check_lookup_name
from virtiofsd_plugins.passthrough.state import PassthroughState

_NS = 1_000_000_000
_TIME_BITS = abi.FATTR_ATIME | abi.FATTR_MTIME | abi.FATTR_ATIME_NOW | abi.FATTR_MTIME_NOW
_OWNER_BITS = abi.FATTR_UID | abi.FATTR_GID
#: An off_t is signed: a guest size or offset above this is invalid for the host.
MAX_OFFSET = (1 << 63) - 1


def posix_permits(st: Any, uid: int, gid: int, groups: Sequence[int], wanted: int) -> bool:
    """Whether the permission bits of ``st`` grant ``wanted`` (``R_OK|W_OK|X_OK``) to a caller.

    POSIX class selection: the owner bits when the caller owns the file, else the group bits when
    one of the caller's groups is the file's, else the other bits; only that class counts.  Root
    may read and write anything, and execute what has an x bit somewhere (or search a folder).
    ACLs are not consulted.
    """
    mode = st.st_mode
    if uid == 0:
        return not (wanted & os.X_OK) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if uid == st.st_uid:
        granted = mode >> 6
    elif gid == st.st_gid or st.st_gid in groups:
        granted = mode >> 3
    else:
        granted = mode
    return granted & wanted == wanted


def _timespec(valid: int, now_bit: int, set_bit: int, time_ns: int) -> tuple[int, int]:
    if valid & now_bit:
        return 0, ffi.UTIME_NOW
    if valid & set_bit:
        return divmod(time_ns, _NS)
    return 0, ffi.UTIME_OMIT


class EntryOps:
    """The name and attribute operations of one passthrough file system."""

    def __init__(self, state: PassthroughState) -> None:
        self._state = state
        self._inodes = state.inodes
        self._ids = state.ids
        self._timeout = state.timeout

    # --- Session -------------------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_init(self, req: Any, session: Any) -> Any:
        self._state.reset()
        return True

    @hookimpl
    def virtiofsd_fuse_destroy(self, req: Any) -> Any:
        self._state.reset()
        return True

    @hookimpl
    def virtiofsd_unconfigure(self, config: Any) -> None:
        self._state.close()

    # --- Lookup counts -------------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_lookup(self, req: Any, parent: int, name: bytes) -> Any:
        check_lookup_name(name)
        parent_inode = self._inodes.get(parent)
        if name == b".." and parent == abi.ROOT_ID:
            name = b"."
        return self._state.lookup(req, parent_inode, name)

    @hookimpl
    def virtiofsd_fuse_forget(self, req: Any, nodeid: int, nlookup: int) -> Any:
        self._inodes.forget(nodeid, nlookup)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_batch_forget(self, req: Any, forgets: Sequence[tuple[int, int]]) -> Any:
        self._inodes.forget_many(forgets)
        return EMPTY

    # --- Attributes ----------------------------------------------------------------------------

    @hookimpl
    def virtiofsd_fuse_getattr(self, req: Any, nodeid: int, fh: int | None) -> Any:
        return AttrReply(self._ids.guest_view(os.stat(self._inodes.get(nodeid).fd)),
                         self._timeout)

    @hookimpl
    def virtiofsd_fuse_setattr(self, req: Any, nodeid: int, valid: int, fh: int | None, mode: int,
                               uid: int, gid: int, size: int, atime_ns: int,
                               mtime_ns: int) -> Any:
        """Mode, owner, size, then times, in the Rust daemon's order.

        Through ``fh`` when the guest gave one; otherwise mode and times go through the magic
        link (chmod of a symlink: the host kernel answers EOPNOTSUPP), the owner through
        ``fchownat(AT_EMPTY_PATH)`` on the O_PATH descriptor, and a size through a write-only
        reopen, made before anything changes so that a refusal changes nothing.  With
        HANDLE_KILLPRIV_V2, a size flagged FATTR_KILL_SUIDGID clears setuid/setgid first, as
        Linux does for a local file (:mod:`virtiofsd_plugins.passthrough.killpriv`).
        """
        state = self._state
        inode = self._inodes.get(nodeid)
        handle = state.handles.get(fh, nodeid) if fh is not None else None
        if valid & abi.FATTR_SIZE and not 0 <= size <= MAX_OFFSET:
            raise FuseError(errno.EINVAL, f"size {size} out of range")
        host_uid, host_gid = state.ids.owner_to_host(uid if valid & abi.FATTR_UID else None,
                                                     gid if valid & abi.FATTR_GID else None)
        truncate_fd = -1
        if valid & abi.FATTR_SIZE and handle is None:
            truncate_fd = state.reopen(inode, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            path_fd = inode.fd  # held while its number is in use (see PathFd)
            proc_name = str(path_fd)
            if valid & abi.FATTR_MODE:
                # Only the permission bits count (the kernel masks them so); the guest's u32
                # would not even fit the C int os.chmod takes.
                mode &= 0o7777
                if handle is not None:
                    os.fchmod(handle.fd, mode)
                else:
                    os.chmod(proc_name, mode, dir_fd=state.proc_self_fd)
            if valid & _OWNER_BITS:
                ffi.fchownat(path_fd, b"",
                             ffi.UNCHANGED if host_uid is None else host_uid,
                             ffi.UNCHANGED if host_gid is None else host_gid,
                             ffi.AT_EMPTY_PATH | ffi.AT_SYMLINK_NOFOLLOW)
            if valid & abi.FATTR_SIZE:
                io_fd = handle.fd if handle is not None else truncate_fd
                with clearing_suidgid_of_fd(kills_suidgid(req, valid & abi.FATTR_KILL_SUIDGID),
                                            io_fd):
                    os.ftruncate(io_fd, size)
            if valid & _TIME_BITS:
                atime = _timespec(valid, abi.FATTR_ATIME_NOW, abi.FATTR_ATIME, atime_ns)
                mtime = _timespec(valid, abi.FATTR_MTIME_NOW, abi.FATTR_MTIME, mtime_ns)
                if handle is not None:
                    ffi.futimens(handle.fd, atime, mtime)
                else:
                    ffi.utimensat(state.proc_self_fd, proc_name.encode(), atime, mtime)
        finally:
            if truncate_fd >= 0:
                os.close(truncate_fd)
        return AttrReply(state.ids.guest_view(os.stat(inode.fd)), self._timeout)

    @hookimpl
    def virtiofsd_fuse_readlink(self, req: Any, nodeid: int) -> Any:
        return os.readlink(b"", dir_fd=self._inodes.get(nodeid).fd)

    @hookimpl
    def virtiofsd_fuse_access(self, req: Any, nodeid: int, mask: int) -> Any:
        """Checked in user space against the mode bits, like the Rust daemon, but with POSIX
        class selection (:func:`posix_permits`) where Rust lets any matching class grant."""
        st = self._ids.guest_view(os.stat(self._inodes.get(nodeid).fd))
        wanted = mask & (os.R_OK | os.W_OK | os.X_OK)
        if wanted and not posix_permits(st, req.uid, req.gid, req.supplementary_groups, wanted):
            raise FuseError(errno.EACCES)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_statfs(self, req: Any, nodeid: int) -> Any:
        return StatfsReply(os.fstatvfs(self._inodes.get(nodeid).fd))
