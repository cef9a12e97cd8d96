"""What every passthrough operation shares: the inode store, the open-file table, the
configuration, and the primitives built on them (lookup, reopen, open flags).

Two kernel facts shape these primitives:

- An inode is an O_PATH descriptor.  It can serve as ``dir_fd``, be ``fstat``-ed and
  ``fstatvfs``-ed, but not read, written, chmod-ed or truncated.  For those it is reopened through
  its magic link ``/proc/self/fd/N``, which yields a real open of the same inode with new flags.
  That reopen follows the inode whatever it is, so it is allowed for regular files and folders
  only (:attr:`Inode.reopenable`).
- ``/proc/self/fd`` is held as a descriptor, and every magic link is reached relative to it
  (``openat(proc_self_fd, "N")``): inside the namespace sandbox ``/proc/self/fd/N`` as a path no
  longer exists, so the descriptor comes from the sandbox
  (:func:`virtiofsd.sandbox.open_proc_self_fd`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

from virtiofsd.config import CacheMode
from virtiofsd.errors import ConfigError, FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.replies import EntryReply, OpenReply
from virtiofsd.sandbox import open_proc_self_fd
from virtiofsd.sys import ffi
from virtiofsd_plugins.inode_handles.store import O_PATH_FLAGS, Inode
from virtiofsd_plugins.passthrough.handles import HandleTable
from virtiofsd_plugins.passthrough.ids import IdMapper

log = logging.getLogger(__name__)

#: Guest open flags that never reach a reopen: O_APPEND is applied per write (RWF_APPEND) so a
#: cached or mmap write lands at the offset the guest chose; creation flags belong to CREATE; the
#: magic link must be followed; an O_PATH handle could do no I/O.
_STRIPPED_OPEN_FLAGS = os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_PATH

#: Open reply flags per cache mode (the Rust daemon's): (files, folders).
_CACHE_OPEN_FLAGS = {
    CacheMode.NEVER: (abi.FOPEN_DIRECT_IO, 0),
    CacheMode.METADATA: (abi.FOPEN_DIRECT_IO, abi.FOPEN_CACHE_DIR | abi.FOPEN_KEEP_CACHE),
    CacheMode.ALWAYS: (abi.FOPEN_KEEP_CACHE, abi.FOPEN_KEEP_CACHE | abi.FOPEN_CACHE_DIR),
    CacheMode.AUTO: (0, 0),
}

_SUBMOUNTS = int(abi.InitFlag.SUBMOUNTS)
_S_IFDIR = stat.S_IFDIR
_WRITEBACK_CACHE = int(abi.InitFlag.WRITEBACK_CACHE)


def _unmapped(req: Any, name: bytes) -> None:
    """The mapping hook's answer when no mapping plugin is loaded."""
    return None


def _open_cwd() -> int | None:
    """A descriptor of the working folder, to return to on close; ``None`` when it cannot be
    opened (a sandboxed process may have no reachable working folder)."""
    try:
        return os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


_CONFINED = ffi.RESOLVE_IN_ROOT | ffi.RESOLVE_NO_MAGICLINKS
_DOTS = (b".", b"..")


def open_beneath(dir_fd: int, name: bytes) -> int:
    """An O_PATH descriptor of ``name`` in ``dir_fd``, the final symlink not followed.

    The name is one validated component already; where the kernel has openat2 the walk is also
    confined to ``dir_fd`` (RESOLVE_IN_ROOT) and refuses magic links, so that a name that ever
    slipped past validation could still not leave the folder.  ``..`` cannot be confined that
    way (it would stay at ``dir_fd``); its caller keeps ``..`` of the shared folder's root at
    the root.
    """
    if ffi.openat2_available and name not in _DOTS:
        try:
            return ffi.openat2(dir_fd, name, O_PATH_FLAGS, 0, _CONFINED)
        except OSError as err:
            if err.errno != errno.ENOSYS:
                raise
    return os.open(name, O_PATH_FLAGS, dir_fd=dir_fd)


class PassthroughState:
    """The state of one passthrough file system, shared by its operation objects."""

    def __init__(self, config: Any, inodes: Any, proc_self_fd: int,
                 xattr_to_host: Callable[..., Any] | None = None) -> None:
        """Take ownership of ``inodes`` (an inode store) and ``proc_self_fd``, the descriptor of
        the fd folder, which becomes the process's working folder (see :meth:`magic_link_path`).
        ``xattr_to_host`` is the caller of the ``virtiofsd_xattr_to_host`` hook (``None``: names
        are never mapped)."""
        self.config = config
        self.inodes = inodes
        self.handles = HandleTable(inodes.fd_budget)
        self.ids = IdMapper.from_config(config)
        self.proc_self_fd = proc_self_fd
        self._saved_cwd = _open_cwd()
        os.fchdir(proc_self_fd)
        self._xattr_to_host = xattr_to_host or _unmapped
        self.timeout = config.timeout
        self.file_open_flags, self.dir_open_flags = _CACHE_OPEN_FLAGS[CacheMode(config.cache)]
        self._cleared_open_flags = _STRIPPED_OPEN_FLAGS
        if not config.preserve_noatime:
            # O_NOATIME fails with EPERM on files the daemon's user does not own.
            self._cleared_open_flags |= os.O_NOATIME
        if not config.allow_direct_io:
            self._cleared_open_flags |= os.O_DIRECT
        self._announce_submounts = config.announce_submounts
        # The guest already applied its umask to every mode it sends; the daemon's own must not
        # mask them again (the Rust daemon sets it to 0 as well).
        self._saved_umask = os.umask(0)

    @classmethod
    def create(cls, config: Any, inodes: Any,
               xattr_to_host: Callable[..., Any] | None = None) -> PassthroughState:
        try:
            proc_self_fd = open_proc_self_fd()
        except OSError as err:
            raise ConfigError(f"cannot open this process's fd folder (/proc/self/fd): {err}; "
                              "is /proc mounted?") from err
        return cls(config, inodes, proc_self_fd, xattr_to_host)

    # --- Inodes --------------------------------------------------------------------------------

    def lookup(self, req: Any, parent: Inode, name: bytes) -> EntryReply:
        """Open ``name`` (already validated) in ``parent`` as an O_PATH descriptor without
        following a symlink, and count one lookup of the inode it reaches."""
        return self.entry_for_fd(req, parent, open_beneath(parent.fd, name))

    def entry_for_fd(self, req: Any, parent: Inode, path_fd: int) -> EntryReply:
        """Count one lookup of the inode of ``path_fd`` (an O_PATH descriptor, whose ownership
        passes to the store) and describe it to the guest.  The attributes come from ``statx``
        of that descriptor, never from a name that could meanwhile point elsewhere.  A folder
        on another device or mount than its parent is a mount point: with
        ``--announce-submounts`` it is flagged ATTR_SUBMOUNT, so the guest gives it its own
        ``st_dev``."""
        inode, st = self.inodes.claim(path_fd)
        attr_flags = 0
        if (inode.file_type == _S_IFDIR and self._announce_submounts
                and req.session.flags & _SUBMOUNTS
                and (inode.key.dev, inode.key.mnt_id) != (parent.key.dev, parent.key.mnt_id)):
            attr_flags = abi.ATTR_SUBMOUNT
        timeout = self.timeout
        return EntryReply(inode.nodeid, self.ids.guest_view(st), timeout, timeout, 0, attr_flags)

    def reopen(self, inode: Inode, flags: int) -> int:
        """A new descriptor of ``inode`` opened with ``flags`` through its magic link.

        :raises FuseError: EBADF for anything but a regular file or a folder (as the Rust
            daemon answers): never open a FIFO, device or socket of the host this way.
        """
        if not inode.reopenable:
            raise FuseError(errno.EBADF, f"node {inode.nodeid} is not a regular file or folder")
        path_fd = inode.fd  # held while its number is in use (see PathFd)
        return os.open(str(path_fd), flags, dir_fd=self.proc_self_fd)

    def magic_link_path(self, fd: int) -> str:
        """A path to the magic link of descriptor ``fd`` (an inode's O_PATH one), for the system
        calls that take a path but no directory descriptor (``getxattr(2)`` and its kin: their
        ``f*`` forms refuse O_PATH descriptors).  The only place that builds such a path.

        It is relative to the working folder, which is the fd folder (set in ``__init__``, as
        the Rust daemon does with ``fchdir``): no absolute path to that folder exists in every
        sandbox (``/proc`` inside the namespace one, none at all inside chroot).  Threads that
        took their own file-system context (``unshare(CLONE_FS)``, for a per-thread umask)
        copied that working folder with it."""
        return str(fd)

    def xattr_name_to_host(self, req: Any, name: bytes) -> bytes:
        """The host name of the guest's xattr ``name`` (``--xattrmap``, through the mapping
        hook; unchanged when no mapping plugin is loaded).

        :raises FuseError: the map refuses the name (EPERM or ENOTSUP).
        """
        mapped = self._xattr_to_host(req=req, name=name)
        return name if mapped is None else mapped

    # --- Opening -------------------------------------------------------------------------------

    def host_open_flags(self, guest_flags: int, session_flags: int) -> int:
        """The flags to reopen with, from the guest's ``open(2)`` flags.

        With the write-back cache the guest kernel reads pages of files opened write-only, so
        O_WRONLY becomes O_RDWR.
        """
        # The guest's flags are a u32; the host's a C int, where bit 31 means nothing.
        flags = guest_flags & ~self._cleared_open_flags & 0x7FFFFFFF
        if session_flags & _WRITEBACK_CACHE and flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags | os.O_CLOEXEC

    def open_handle(self, req: Any, inode: Inode, guest_flags: int, directory: bool) -> OpenReply:
        """Reopen ``inode`` for I/O and add it to the open-file table."""
        flags = self.host_open_flags(guest_flags, req.session.flags)
        if directory:
            flags |= os.O_DIRECTORY
        fd = self.reopen(inode, flags)
        fh = self.handles.insert(inode.nodeid, fd)
        is_dir = flags & os.O_DIRECTORY
        return OpenReply(fh, self.dir_open_flags if is_dir else self.file_open_flags)

    # --- Life cycle ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Drop every handle and every inode but the root (DESTROY, a second INIT)."""
        self.handles.clear()
        self.inodes.clear()

    def close(self) -> None:
        """Release everything and give the process its umask back; the daemon stops.  A second
        call does nothing."""
        if self.proc_self_fd < 0:
            return
        self.handles.clear()
        self.inodes.close()
        if self._saved_cwd is not None:
            os.fchdir(self._saved_cwd)
            os.close(self._saved_cwd)
            self._saved_cwd = None
        os.close(self.proc_self_fd)
        self.proc_self_fd = -1
        os.umask(self._saved_umask)
