"""Extended attributes (``--xattr``): GETXATTR, SETXATTR, LISTXATTR, REMOVEXATTR.

Registered only when extended attributes are on; without them no plugin answers these opcodes,
the guest receives ENOSYS and the Linux guest stops asking (as with the Rust daemon).

Every call goes through the inode's magic link path (:meth:`PassthroughState.magic_link_path`):
``f*xattr`` refuse O_PATH descriptors, and the path works for every file type, symlinks
included (the magic link leads to the symlink itself, never to its target), without reopening
the file (the Rust daemon reopens regular files and folders, which needs read permission on
them, and changes the working directory for the others).

Names pass through the mapping hooks (``--xattrmap``): a name the map refuses is EPERM or
ENOTSUP, except that GETXATTR of a ``bad`` name answers ENODATA as both reference daemons do;
host names the map hides are left out of LISTXATTR.  Without ``--posix-acl`` the two ACL names
are refused with ENOTSUP and left out of LISTXATTR, so that the guest kernel, which does not
enforce ACLs then, never sees or stores ACLs the host would enforce.

:class:`CapabilityGuard` implements the CVE-2021-20263 fix: when the map renames
``security.capability``, the host kernel no longer knows that name holds file capabilities and
will not drop it when the file changes, so the daemon removes it itself before a write, a
truncate, a chown and an O_TRUNC open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator, Iterator
from typing import Any

from virtiofsd import hookimpl
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EMPTY, XattrSizeReply
from virtiofsd_plugins.passthrough.names import check_new_name
from virtiofsd_plugins.passthrough.state import PassthroughState, open_beneath

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
ACL_NAMES = (ACL_ACCESS, ACL_DEFAULT)
SECURITY_CAPABILITY = b"security.capability"


def _check_name(name: bytes) -> None:
    if not name:
        raise FuseError(errno.EINVAL, "empty xattr name")


def _reply_sized(body: bytes, size: int) -> Any:
    """``size`` 0 asks for the length only; a value longer than ``size`` is ERANGE."""
    if size == 0:
        return XattrSizeReply(len(body))
    if len(body) > size:
        raise FuseError(errno.ERANGE, f"{len(body)} bytes do not fit in {size}")
    return body


class XattrOps:
    """The four xattr operations of one passthrough file system."""

    def __init__(self, state: PassthroughState, to_guest: Any, posix_acl: bool) -> None:
        """``to_guest`` is the caller of the ``virtiofsd_xattr_to_guest`` hook."""
        self._state = state
        self._inodes = state.inodes
        self._to_guest = to_guest
        self._posix_acl = posix_acl

    def _host_name(self, req: Any, name: bytes) -> bytes:
        _check_name(name)
        if not self._posix_acl and name in ACL_NAMES:
            raise FuseError(errno.ENOTSUP, "POSIX ACLs are off (--posix-acl)")
        return self._state.xattr_name_to_host(req, name)

    @contextlib.contextmanager
    def _magic_link(self, nodeid: int) -> Iterator[str]:
        """The magic-link path of ``nodeid``'s descriptor, valid inside the block: the
        descriptor of a handle-backed inode is opened for the occasion and closed with its last
        reference, so it is held here until the call is done."""
        fd = self._inodes.get(nodeid).fd
        yield self._state.magic_link_path(fd)

    @hookimpl
    def virtiofsd_fuse_getxattr(self, req: Any, nodeid: int, name: bytes, size: int) -> Any:
        try:
            host_name = self._host_name(req, name)
        except FuseError as exc:
            if exc.errno == errno.EPERM:
                raise FuseError(errno.ENODATA, f"xattr {name!r} refused by the map") from None
            raise
        with self._magic_link(nodeid) as path:
            return _reply_sized(os.getxattr(path, host_name), size)

    @hookimpl
    def virtiofsd_fuse_listxattr(self, req: Any, nodeid: int, size: int) -> Any:
        names = []
        with self._magic_link(nodeid) as path:
            host_names = os.listxattr(path)
        for host_name in map(os.fsencode, host_names):
            if not self._posix_acl and host_name in ACL_NAMES:
                continue
            guest_name = self._to_guest(req=req, name=host_name)
            if guest_name is False:
                continue
            names.append(host_name if guest_name is None else guest_name)
        return _reply_sized(b"".join(name + b"\0" for name in names), size)

    @hookimpl
    def virtiofsd_fuse_setxattr(self, req: Any, nodeid: int, name: bytes, value: bytes,
                                flags: int, setxattr_flags: int) -> Any:
        """Set the attribute; an ACL change the guest flags with SETXATTR_ACL_KILL_SGID then
        clears S_ISGID explicitly (the host kernel would not: the daemon holds CAP_FSETID)."""
        host_name = self._host_name(req, name)
        fd = self._inodes.get(nodeid).fd  # held for the whole call (see _magic_link)
        os.setxattr(self._state.magic_link_path(fd), host_name, value, flags)
        if (self._posix_acl and setxattr_flags & abi.SETXATTR_ACL_KILL_SGID
                and name == ACL_ACCESS):
            mode = os.stat(fd).st_mode
            if mode & stat.S_ISGID:
                os.chmod(str(fd), stat.S_IMODE(mode) & ~stat.S_ISGID,
                         dir_fd=self._state.proc_self_fd)
        return EMPTY

    @hookimpl
    def virtiofsd_fuse_removexattr(self, req: Any, nodeid: int, name: bytes) -> Any:
        host_name = self._host_name(req, name)
        with self._magic_link(nodeid) as path:
            os.removexattr(path, host_name)
        return EMPTY


class CapabilityGuard:
    """Drops the remapped ``security.capability`` (host name ``host_name``) where the kernel
    would drop the real one (CVE-2021-20263).  Registered only when the map renames it."""

    def __init__(self, state: PassthroughState, host_name: bytes) -> None:
        self._state = state
        self._host_name = host_name

    def _drop(self, target: int | str) -> None:
        """Remove the attribute from an open descriptor or a magic-link path; its absence, or
        a file system without xattrs, is fine."""
        try:
            os.removexattr(target, self._host_name)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise

    def _drop_from_node(self, nodeid: int) -> None:
        fd = self._state.inodes.get(nodeid).fd  # held until the call is done (see _magic_link)
        self._drop(self._state.magic_link_path(fd))

    @hookimpl(wrapper=True)
    def virtiofsd_fuse_write(self, nodeid: int, fh: int) -> Generator[None, Any, Any]:
        self._drop(self._state.handles.get(fh, nodeid).fd)
        return (yield)

    @hookimpl(wrapper=True)
    def virtiofsd_fuse_setattr(self, nodeid: int, valid: int) -> Generator[None, Any, Any]:
        if valid & (abi.FATTR_SIZE | abi.FATTR_UID | abi.FATTR_GID):
            self._drop_from_node(nodeid)
        return (yield)

    @hookimpl(wrapper=True)
    def virtiofsd_fuse_open(self, nodeid: int, flags: int) -> Generator[None, Any, Any]:
        if flags & os.O_TRUNC:
            self._drop_from_node(nodeid)
        return (yield)

    @hookimpl(wrapper=True)
    def virtiofsd_fuse_create(self, parent: int, name: bytes,
                              flags: int) -> Generator[None, Any, Any]:
        """CREATE of an existing name without O_EXCL opens it, and truncates it with O_TRUNC.

        The name is checked as CREATE checks it before anything is opened: this wrapper runs
        first, and ``..`` of the shared folder's root would otherwise lead outside it."""
        if flags & os.O_TRUNC and not flags & os.O_EXCL:
            check_new_name(name)
            with contextlib.suppress(FileNotFoundError):
                fd = open_beneath(self._state.inodes.get(parent).fd, name)
                try:
                    if stat.S_ISREG(os.stat(fd).st_mode):
                        self._drop(self._state.magic_link_path(fd))
                finally:
                    os.close(fd)
        return (yield)
