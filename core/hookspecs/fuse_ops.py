"""One first-result hook per FUSE opcode: the filesystem contract.

The router decodes each request from guest memory and calls the hook of its opcode with keyword
arguments.  The first implementation that returns something other than ``None`` answers; when no
plugin answers, the guest receives ENOSYS (and the Linux guest then stops sending that opcode
for optional ones such as FSYNCDIR or LSEEK).

Return values: a reply object from :mod:`virtiofsd.fuse.replies` (``EntryReply``, ``AttrReply``,
``OpenReply`` ...), ``bytes`` for replies whose body is raw data (READLINK, READDIR, GETXATTR),
or :data:`virtiofsd.fuse.replies.EMPTY` (``b""``) for a success without data.  READ and WRITE
return the number of bytes moved.

Errors: raise :class:`virtiofsd.FuseError` (or let an ``OSError`` through): the guest receives
``-errno``.  Any other exception is a bug: the router logs it with its traceback and answers EIO.

Conventions for every hook:

- ``req`` is a :class:`virtiofsd.fuse.context.Request` (caller uid/gid/pid, negotiated session).
- ``nodeid``/``parent`` are FUSE node ids the daemon handed out (1 is the shared folder's root);
  an unknown id is answered with EBADF, as the Rust daemon does.
- ``name`` is ``bytes``: one path component the guest chose.  It is untrusted: a plugin must
  reject ``/``, empty names, and ``.``/``..`` where a new name is expected, and never let a name
  resolve outside the shared folder.
- ``fh`` is a handle the daemon returned from OPEN, CREATE or OPENDIR.
- Every successful LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE (and each READDIRPLUS entry with
  a non-zero nodeid) adds one to the inode's lookup count; FORGET and BATCH_FORGET take it back.
"""

from __future__ import annotations

from typing import Any, Sequence

from virtiofsd.hookspecs import hookspec

# --- Session ------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_init(req: Any, session: Any) -> Any:
    """The guest mounted (FUSE_INIT): reset per-session state and accept the session.

    The core has already negotiated protocol version and flags into ``session``
    (:class:`virtiofsd.fuse.session.FuseSession`); a second INIT is a full reset, as DESTROY.

    :returns: ``True`` to accept.  Raise FuseError(EPROTO) to refuse the guest's flags.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_destroy(req: Any) -> Any:
    """The guest unmounted (FUSE_DESTROY) or the device was reset: drop every inode and handle
    except the root, as if the session never happened.  :returns: ``True``."""


# --- Names and attributes ----------------------------------------------------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_lookup(req: Any, parent: int, name: bytes) -> Any:
    """Look up ``name`` in the folder ``parent``.

    :returns: an ``EntryReply``; its nodeid's lookup count grows by one.  A missing name raises
        ENOENT (or returns a negative entry with nodeid 0 to let the guest cache the absence).
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_forget(req: Any, nodeid: int, nlookup: int) -> Any:
    """The guest drops ``nlookup`` references to ``nodeid`` (no reply is sent).

    The count must saturate at zero: a guest that forgets more than it looked up must not
    underflow anything.  At zero the inode is released.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_batch_forget(req: Any, forgets: Sequence[tuple[int, int]]) -> Any:
    """Many FORGETs at once: ``forgets`` holds ``(nodeid, nlookup)`` pairs.  No reply is sent."""


@hookspec(firstresult=True)
def virtiofsd_fuse_getattr(req: Any, nodeid: int, fh: int | None) -> Any:
    """Attributes of ``nodeid`` (``fh`` is given when the guest asked through an open file).

    :returns: an ``AttrReply``.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_setattr(req: Any, nodeid: int, valid: int, fh: int | None, mode: int,
                           uid: int, gid: int, size: int, atime_ns: int, mtime_ns: int) -> Any:
    """Change attributes of ``nodeid``; ``valid`` holds the ``abi.FATTR_*`` bits of the fields
    to change.

    ``atime_ns``/``mtime_ns`` are nanoseconds since the epoch; ``FATTR_ATIME_NOW`` and
    ``FATTR_MTIME_NOW`` ask for the current time instead.  ``FATTR_SIZE`` truncates (through
    ``fh`` when given).  ``FATTR_KILL_SUIDGID`` asks to clear setuid/setgid as a write would.

    :returns: an ``AttrReply`` with the attributes after the change.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_readlink(req: Any, nodeid: int) -> Any:
    """The target of the symlink ``nodeid``.  :returns: ``bytes``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_access(req: Any, nodeid: int, mask: int) -> Any:
    """Check ``mask`` (``os.R_OK|W_OK|X_OK``, or ``F_OK``) for the caller.

    :returns: ``EMPTY`` when allowed; raise EACCES otherwise.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_statfs(req: Any, nodeid: int) -> Any:
    """File-system statistics of the file system holding ``nodeid``.  :returns: ``StatfsReply``."""


# --- Creating, linking, removing ---------------------------------------------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_mknod(req: Any, parent: int, name: bytes, mode: int, rdev: int,
                         umask: int) -> Any:
    """Create a node (regular file, FIFO, socket, device) owned by the caller.

    ``umask`` is the guest process's umask; it is only to be applied by the daemon when the
    guest negotiated DONT_MASK (POSIX ACLs), otherwise the guest already applied it to ``mode``.

    :returns: an ``EntryReply``.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_mkdir(req: Any, parent: int, name: bytes, mode: int, umask: int) -> Any:
    """Create a folder owned by the caller.  :returns: an ``EntryReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_symlink(req: Any, parent: int, name: bytes, target: bytes) -> Any:
    """Create the symlink ``name`` pointing at ``target`` (stored verbatim, never followed by
    the daemon).  :returns: an ``EntryReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_link(req: Any, nodeid: int, newparent: int, newname: bytes) -> Any:
    """Create a hard link ``newname`` in ``newparent`` to ``nodeid``.  :returns: ``EntryReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_unlink(req: Any, parent: int, name: bytes) -> Any:
    """Remove the non-folder ``name``.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_rmdir(req: Any, parent: int, name: bytes) -> Any:
    """Remove the empty folder ``name``.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_rename(req: Any, parent: int, name: bytes, newparent: int, newname: bytes,
                          flags: int) -> Any:
    """Rename (RENAME with ``flags`` 0, RENAME2 with ``RENAME_NOREPLACE``/``RENAME_EXCHANGE``/
    ``RENAME_WHITEOUT``).  :returns: ``EMPTY``."""


# --- Files ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_open(req: Any, nodeid: int, flags: int, open_flags: int) -> Any:
    """Open ``nodeid`` with the guest's ``open(2)`` ``flags``; ``open_flags`` holds
    ``abi.OPEN_KILL_SUIDGID``.  Only regular files may be opened (never a device or FIFO of the
    host through ``/proc/self/fd``).  :returns: an ``OpenReply`` whose ``open_flags`` carry the
    cache policy (``FOPEN_DIRECT_IO``, ``FOPEN_KEEP_CACHE``)."""


@hookspec(firstresult=True)
def virtiofsd_fuse_create(req: Any, parent: int, name: bytes, mode: int, flags: int, umask: int,
                          open_flags: int) -> Any:
    """Create and open a regular file atomically.  :returns: a ``CreateReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_read(req: Any, nodeid: int, fh: int, offset: int, size: int, flags: int,
                        sink: Any) -> Any:
    """Read up to ``size`` bytes at ``offset`` into guest memory.

    ``sink`` is a :class:`virtiofsd.fuse.codec.ReplySink`: ``sink.buffers(size)`` gives the
    memoryviews of guest memory that follow the reply header; read straight into them
    (``os.preadv``), never through an intermediate copy.

    :returns: the number of bytes read (0 at end of file).
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_write(req: Any, nodeid: int, fh: int, offset: int, size: int,
                         write_flags: int, flags: int, data: Sequence[memoryview]) -> Any:
    """Write ``size`` bytes taken from ``data`` (memoryviews of guest memory) at ``offset``.

    ``write_flags`` holds ``abi.WRITE_CACHE`` (a write-back or mmap write) and
    ``abi.WRITE_KILL_SUIDGID``.  Write straight from ``data`` (``os.pwritev``).

    :returns: the number of bytes written.
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_flush(req: Any, nodeid: int, fh: int, lock_owner: int) -> Any:
    """The guest closed one file descriptor of an open file (close(2)).  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_release(req: Any, nodeid: int, fh: int, flags: int, release_flags: int,
                           lock_owner: int) -> Any:
    """The last reference to an open file is gone: close ``fh``.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_fsync(req: Any, nodeid: int, fh: int, datasync: bool) -> Any:
    """fsync(2) or fdatasync(2) of an open file.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_fallocate(req: Any, nodeid: int, fh: int, offset: int, length: int,
                             mode: int) -> Any:
    """fallocate(2) with the guest's ``mode`` bits.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_lseek(req: Any, nodeid: int, fh: int, offset: int, whence: int) -> Any:
    """lseek(2), for SEEK_DATA and SEEK_HOLE.  :returns: an ``LseekReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_copy_file_range(req: Any, nodeid: int, fh_in: int, off_in: int,
                                   nodeid_out: int, fh_out: int, off_out: int, length: int,
                                   flags: int) -> Any:
    """copy_file_range(2) between two open files.  :returns: a ``WriteReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_tmpfile(req: Any, parent: int, name: bytes, mode: int, flags: int, umask: int,
                           open_flags: int) -> Any:
    """open(2) with O_TMPFILE in the folder ``parent``: an unnamed regular file owned by the
    caller, open for I/O.  ``name`` is a placeholder the guest kernel sends (``/``).
    :returns: a ``CreateReply`` (the new inode counts one lookup)."""


# --- Locks (served when POSIX_LOCKS or FLOCK_LOCKS was negotiated) ----------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_getlk(req: Any, nodeid: int, fh: int, owner: int, start: int, end: int,
                         lock_type: int, pid: int, lk_flags: int) -> Any:
    """F_GETLK: the first lock held by another owner that conflicts with the byte range
    ``start``..``end`` (inclusive; ``end`` 2**63-1 means "to the end of the file") of type
    ``lock_type`` (``F_RDLCK``/``F_WRLCK``).  ``owner`` is the guest's lock owner (one per
    process for POSIX locks).  :returns: a ``LockReply`` (type ``F_UNLCK`` when none conflicts)."""


@hookspec(firstresult=True)
def virtiofsd_fuse_setlk(req: Any, nodeid: int, fh: int, owner: int, start: int, end: int,
                         lock_type: int, pid: int, lk_flags: int, sleep: bool) -> Any:
    """F_SETLK (``sleep`` False) or F_SETLKW (``sleep`` True); with ``abi.LK_FLOCK`` in
    ``lk_flags``, flock(2) of the open file ``fh`` instead of a POSIX record lock.

    A conflict without ``sleep`` is EAGAIN.  With ``sleep`` the hook must not block the thread
    that called it: it returns a :class:`virtiofsd.deferred.Deferred` resolved later with
    ``EMPTY`` (or an error), and answers EINTR when that deferred is cancelled (FUSE_INTERRUPT,
    the device stopping).  :returns: ``EMPTY`` or a ``Deferred``.
    """


# --- Folders -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_opendir(req: Any, nodeid: int, flags: int) -> Any:
    """Open a folder for reading.  :returns: an ``OpenReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_readdir(req: Any, nodeid: int, fh: int, offset: int, size: int) -> Any:
    """Entries of an open folder from ``offset`` (0, or an offset this daemon returned), packed
    with :class:`virtiofsd.fuse.dirents.DirentBuffer` into at most ``size`` bytes.

    :returns: ``bytes`` (empty at the end of the folder).
    """


@hookspec(firstresult=True)
def virtiofsd_fuse_readdirplus(req: Any, nodeid: int, fh: int, offset: int, size: int) -> Any:
    """READDIR with a full lookup per entry (``.`` and ``..`` excepted, sent with nodeid 0).
    An entry looked up but not fitting must have its lookup undone.  :returns: ``bytes``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_releasedir(req: Any, nodeid: int, fh: int) -> Any:
    """Close an open folder.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_fsyncdir(req: Any, nodeid: int, fh: int, datasync: bool) -> Any:
    """fsync(2) of an open folder.  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_syncfs(req: Any, nodeid: int) -> Any:
    """syncfs(2) of the file system holding ``nodeid`` (sent per submount when submounts are
    announced).  :returns: ``EMPTY``."""


# --- Extended attributes (served when --xattr is on) ------------------------------------------


@hookspec(firstresult=True)
def virtiofsd_fuse_getxattr(req: Any, nodeid: int, name: bytes, size: int) -> Any:
    """Value of ``name``; with ``size`` 0 only its length.  :returns: ``bytes`` or an
    ``XattrSizeReply``; ERANGE when the value is longer than ``size``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_setxattr(req: Any, nodeid: int, name: bytes, value: bytes, flags: int,
                            setxattr_flags: int) -> Any:
    """Set ``name`` to ``value`` (``flags``: XATTR_CREATE/XATTR_REPLACE).  :returns: ``EMPTY``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_listxattr(req: Any, nodeid: int, size: int) -> Any:
    """NUL-separated attribute names; with ``size`` 0 only their total length.  :returns:
    ``bytes`` or an ``XattrSizeReply``."""


@hookspec(firstresult=True)
def virtiofsd_fuse_removexattr(req: Any, nodeid: int, name: bytes) -> Any:
    """Remove ``name``.  :returns: ``EMPTY``."""
