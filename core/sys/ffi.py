"""The one cffi module: system calls the ``os`` module does not offer, in cffi ABI mode.

Nothing is compiled: the declarations below are bound against the C library already loaded into
the interpreter (``ffi.dlopen(None)``).  Each wrapper checks the result and raises ``OSError``
with the errno and the call with its arguments, so a failure reaching the guest keeps its errno
and a failure reaching a log says what was attempted.

Why raw ``syscall()`` for credentials: POSIX says a process has one set of ids, so glibc's
``setresuid``/``setresgid``/``setgroups`` (and Python's ``os.setresuid`` on top of them) signal
every thread and change them all.  The Linux system calls themselves only change the calling
thread's credentials, which is what a daemon serving several requests at once needs: a thread
creating a file for guest uid 1000 must not turn its neighbours into uid 1000.  Syscall numbers
are per architecture; the table below covers the architectures we run on.

File handles (``name_to_handle_at``/``open_by_handle_at``) and ``statx`` with
``STATX_MNT_ID`` are bound in one block below: together they name an inode independently of any
open descriptor, which is what the ``prefer``/``mandatory`` inode stores and the file-handles
migration mode build on.
``openat2`` (resolution confined to a folder) has no glibc wrapper and is called by number.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import cffi

ffi = cffi.FFI()
ffi.cdef("""
    struct timespec { long tv_sec; long tv_nsec; };
    long syscall(long number, ...);
    long getdents64(int fd, void *dirp, size_t count);
    int syncfs(int fd);
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags);
    int fchownat(int dirfd, const char *pathname, unsigned int owner, unsigned int group,
                 int flags);
    int fallocate64(int fd, int mode, long long offset, long long len);
    int utimensat(int dirfd, const char *pathname, const struct timespec times[2], int flags);
    int futimens(int fd, const struct timespec times[2]);
    int unshare(int flags);

    struct file_handle { unsigned int handle_bytes; int handle_type; unsigned char f_handle[]; };
    int name_to_handle_at(int dirfd, const char *pathname, struct file_handle *handle,
                          int *mount_id, int flags);
    int open_by_handle_at(int mount_fd, struct file_handle *handle, int flags);
    struct statx_timestamp { int64_t tv_sec; uint32_t tv_nsec; int32_t __reserved; };
    struct statx {
        uint32_t stx_mask; uint32_t stx_blksize; uint64_t stx_attributes;
        uint32_t stx_nlink; uint32_t stx_uid; uint32_t stx_gid; uint16_t stx_mode;
        uint16_t __spare0[1];
        uint64_t stx_ino; uint64_t stx_size; uint64_t stx_blocks; uint64_t stx_attributes_mask;
        struct statx_timestamp stx_atime, stx_btime, stx_ctime, stx_mtime;
        uint32_t stx_rdev_major; uint32_t stx_rdev_minor;
        uint32_t stx_dev_major; uint32_t stx_dev_minor;
        uint64_t stx_mnt_id;
        uint32_t stx_dio_mem_align; uint32_t stx_dio_offset_align;
        uint64_t __spare3[12];
    };
    int statx(int dirfd, const char *pathname, int flags, unsigned int mask,
              struct statx *statxbuf);
    struct open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
""")
_libc = ffi.dlopen(None)

# <fcntl.h> / <linux/fcntl.h>
AT_SYMLINK_NOFOLLOW = 0x100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
# <linux/fs.h>
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2
# <linux/stat.h>: the two special nanosecond values of utimensat(2).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
# <sched.h>
CLONE_FS = 0x00000200
# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

#: (setgroups, setresuid, setresgid) per ``platform.machine()``: the 32-bit-id variants.
_CREDENTIAL_SYSCALLS = {
    "x86_64": (116, 117, 119),
    "aarch64": (159, 147, 149),
    "riscv64": (159, 147, 149),
}
_SYSCALLS = _CREDENTIAL_SYSCALLS.get(platform.machine())

_NS = 1_000_000_000

#: ``(uid_t)-1``: "leave this id unchanged" for the set*id calls.
UNCHANGED = 0xFFFFFFFF


def _raise(call: str, *args: object) -> None:
    err = ffi.errno
    shown = ", ".join(repr(arg) for arg in args)
    raise OSError(err, f"{os.strerror(err)}: {call}({shown})")


def _syscall_as(prototype: str) -> Any:
    """``syscall(2)``, callable with the fixed ``prototype`` of one system call.

    cffi calls a variadic function with cdata arguments only and builds its call type on each
    call (an ``ffi.cast`` per integer, an ``ffi.new`` per string): that costs more than the
    system call itself on hot paths (LOOKUP's openat2, the credential switch of CREATE).
    Through a fixed prototype, ints and ``bytes`` (passed as a pointer to their data, no copy)
    go straight to registers.  That is sound on every architecture we run on (x86-64, aarch64,
    riscv64): integer and pointer arguments of a variadic call travel in the same registers as
    those of a fixed call, and glibc's syscall() only moves registers.
    """
    return ffi.cast(prototype, ffi.addressof(_libc, "syscall"))


#: setresuid/setresgid(number, r, e, s): ids as longs, as the variadic call passed them.
_id_syscall = _syscall_as("long (*)(long, long, long, long)")
_groups_syscall = _syscall_as("long (*)(long, long, unsigned int *)")


def _credential_syscall(index: int, call: str, *args: int) -> None:
    if _SYSCALLS is None:
        raise OSError(errno.ENOSYS, f"{call}: no syscall number known for {platform.machine()}")
    if _id_syscall(_SYSCALLS[index], *args) != 0:
        _raise(call, *args)


def setresuid_thread(ruid: int, euid: int, suid: int) -> None:
    """setresuid(2) for the calling thread only (``UNCHANGED`` keeps an id)."""
    _credential_syscall(1, "setresuid", ruid, euid, suid)


def setresgid_thread(rgid: int, egid: int, sgid: int) -> None:
    """setresgid(2) for the calling thread only (``UNCHANGED`` keeps an id)."""
    _credential_syscall(2, "setresgid", rgid, egid, sgid)


def setgroups_thread(groups: Sequence[int]) -> None:
    """setgroups(2) for the calling thread only; an empty sequence drops every group."""
    if _SYSCALLS is None:
        raise OSError(errno.ENOSYS, f"setgroups: no syscall number known for {platform.machine()}")
    array = ffi.new("unsigned int[]", list(groups)) if groups else ffi.NULL
    if _groups_syscall(_SYSCALLS[0], len(groups), array) != 0:
        _raise("setgroups", list(groups))


def getdents64(fd: int, buffer: bytearray) -> memoryview:
    """Fill ``buffer`` with ``linux_dirent64`` records from the directory position of ``fd``.

    :returns: a view of the filled part; empty at the end of the directory.  Parse it with
        :func:`virtiofsd.sys.dirents64.parse_dirents64`.
    """
    count = _libc.getdents64(fd, ffi.from_buffer(buffer), len(buffer))
    if count < 0:
        _raise("getdents64", fd, len(buffer))
    return memoryview(buffer)[:count]


def syncfs(fd: int) -> None:
    """syncfs(2): flush the file system holding ``fd`` (not an O_PATH descriptor)."""
    if _libc.syncfs(fd) != 0:
        _raise("syncfs", fd)


def renameat2(olddirfd: int, oldpath: bytes, newdirfd: int, newpath: bytes, flags: int) -> None:
    """renameat2(2) with ``RENAME_NOREPLACE``/``RENAME_EXCHANGE``/``RENAME_WHITEOUT``."""
    if _libc.renameat2(olddirfd, oldpath, newdirfd, newpath, flags) != 0:
        _raise("renameat2", olddirfd, oldpath, newdirfd, newpath, flags)


def fchownat(dirfd: int, path: bytes, uid: int, gid: int, flags: int) -> None:
    """fchownat(2); with ``path`` ``b""`` and ``AT_EMPTY_PATH`` it changes ``dirfd`` itself,
    which works on O_PATH descriptors where fchown(2) does not.  ``UNCHANGED`` keeps an id."""
    if _libc.fchownat(dirfd, path, uid & UNCHANGED, gid & UNCHANGED, flags) != 0:
        _raise("fchownat", dirfd, path, uid, gid, flags)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its ``mode`` bits (``os.posix_fallocate`` has none)."""
    if _libc.fallocate64(fd, mode, offset, length) != 0:
        _raise("fallocate", fd, mode, offset, length)


def utimensat(dirfd: int, path: bytes, atime: tuple[int, int], mtime: tuple[int, int],
              flags: int = 0) -> None:
    """utimensat(2); each time is ``(seconds, nanoseconds)`` where the nanoseconds may be
    ``UTIME_NOW`` or ``UTIME_OMIT``."""
    times = ffi.new("struct timespec[2]", [atime, mtime])
    if _libc.utimensat(dirfd, path, times, flags) != 0:
        _raise("utimensat", dirfd, path, atime, mtime, flags)


def futimens(fd: int, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """futimens(3) on an open (not O_PATH) descriptor; times as for :func:`utimensat`."""
    times = ffi.new("struct timespec[2]", [atime, mtime])
    if _libc.futimens(fd, times) != 0:
        _raise("futimens", fd, atime, mtime)


def unshare(flags: int) -> None:
    """unshare(2) (``os.unshare`` needs Python 3.12): with ``CLONE_FS`` the calling thread gets
    its own umask, working directory and root; with ``CLONE_NEW*`` flags the process enters new
    namespaces (the sandbox)."""
    if _libc.unshare(flags) != 0:
        _raise("unshare", flags)


# --- File handles and mount ids ---------------------------------------------------------------
#
# A file handle names an inode on one file system for as long as the inode exists, whatever
# names it has or loses; ``open_by_handle_at`` turns it back into a descriptor, given any
# descriptor on the same mount (the mount-fd table of the inode store keeps one per mount id).
# Opening by handle needs CAP_DAC_READ_SEARCH; making one does not.  File systems without export
# operations (procfs, some FUSE ones) answer EOPNOTSUPP.

#: <fcntl.h>: the largest handle the kernel hands out.
MAX_HANDLE_SZ = 128
#: <linux/stat.h>
STATX_BASIC_STATS = 0x7FF
STATX_MNT_ID = 0x1000
AT_STATX_SYNC_AS_STAT = 0
#: ``struct statx`` as ``struct.unpack_from`` reads it (mask, blksize, nlink, uid, gid, mode,
#: ino, size, blocks, then atime, ctime, mtime as seconds and nanoseconds (btime and the
#: attribute words skipped), rdev and dev majors and minors, mount id).
_STATX_LAYOUT = struct.Struct("=II8xIIIH2xQQQ8xqI4x16xqI4xqI4xIIIIQ")
assert ffi.sizeof("struct statx") == 256 and _STATX_LAYOUT.size == 152
#: The head of ``struct file_handle``: handle_bytes, handle_type.
_FILE_HANDLE_HEAD = struct.Struct("=Ii")
_FILE_HANDLE_SIZE = _FILE_HANDLE_HEAD.size + MAX_HANDLE_SZ
assert ffi.sizeof("struct file_handle") == _FILE_HANDLE_HEAD.size
#: ``open_by_handle_at`` called with the handle as bytes (``struct file_handle`` packed by
#: :meth:`FileHandle.packed`): cffi passes a ``bytes`` object to a ``const char *`` parameter
#: as a pointer to its data, where a ``struct file_handle *`` would need a fresh cdata, a cast
#: and a copy on each call (an inode store of file handles opens one per request).  The kernel
#: only reads the handle.
_open_by_handle_at = ffi.cast("int (*)(int, const char *, int)",
                              ffi.addressof(_libc, "open_by_handle_at"))
#: The functions of the hot paths, bound once (reading them from the library object each call
#: costs a sixth of the call).
_statx = _libc.statx
_name_to_handle_at = _libc.name_to_handle_at
_make = os.makedev
#: Makes a named tuple from a tuple: the class's own ``__new__`` is Python and costs twice as much.
_tuple_new = tuple.__new__
_per_thread = threading.local()


class FileHandle(NamedTuple):
    """An opaque ``struct file_handle``: hashable, so it can key a table of inodes.

    Equal handles on the same mount name the same inode; the bytes mean nothing outside the
    file system that made them.
    """

    handle_type: int
    handle: bytes

    def packed(self) -> bytes:
        """The ``struct file_handle`` the kernel reads, header and handle bytes."""
        return _FILE_HANDLE_HEAD.pack(len(self.handle), self.handle_type) + self.handle


class Statx(NamedTuple):
    """What ``statx(2)`` reports about an inode, with its mount id.

    The first :data:`FUSE_ATTR_FIELDS` fields are those of ``struct fuse_attr``, in its wire
    order and its units (times as whole seconds and nanoseconds, as statx gives them): an
    attribute reply packs them as they are, without a conversion per field
    (:mod:`virtiofsd.fuse.replies`; LOOKUP, the hottest request of a tree walk, makes one).

    Read by name it is an ``os.stat_result`` of the same inode: the ``st_*`` fields and
    properties have the same values (``st_dev`` and ``st_rdev`` in glibc's encoding, float
    times as ``os.stat`` computes them); only the positions differ, so index it by name.
    """

    st_ino: int
    st_size: int
    st_blocks: int
    atime_sec: int
    mtime_sec: int
    ctime_sec: int
    atime_nsec: int
    mtime_nsec: int
    ctime_nsec: int
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_rdev: int
    st_blksize: int
    st_dev: int
    #: The mount id (``STATX_MNT_ID``); 0 when the kernel does not report it (before 5.8).
    mnt_id: int

    @property
    def st_atime_ns(self) -> int:
        return self.atime_sec * _NS + self.atime_nsec

    @property
    def st_mtime_ns(self) -> int:
        return self.mtime_sec * _NS + self.mtime_nsec

    @property
    def st_ctime_ns(self) -> int:
        return self.ctime_sec * _NS + self.ctime_nsec

    @property
    def st_atime(self) -> float:
        return self.atime_sec + self.atime_nsec * 1e-9

    @property
    def st_mtime(self) -> float:
        return self.mtime_sec + self.mtime_nsec * 1e-9

    @property
    def st_ctime(self) -> float:
        return self.ctime_sec + self.ctime_nsec * 1e-9


#: How many leading fields of :class:`Statx` are ``struct fuse_attr``'s (all but its flags).
FUSE_ATTR_FIELDS = 15


class _ThreadBuffers:
    """One thread's output buffers for statx and name_to_handle_at, made on its first call: a
    cdata allocation costs as much as the Python overhead of the system call itself.  Each is a
    ``bytearray`` (``struct`` unpacks those fastest) seen by C through a cdata pointer."""

    __slots__ = ("statx", "statx_data", "handle", "handle_data", "handle_view", "mount_id")

    def __init__(self) -> None:
        self.statx_data = bytearray(ffi.sizeof("struct statx"))
        self.statx = ffi.from_buffer("struct statx *", self.statx_data)
        self.handle_data = bytearray(_FILE_HANDLE_SIZE)
        self.handle = ffi.from_buffer("struct file_handle *", self.handle_data)
        #: Copies out the handle bytes with one copy (a bytearray slice makes two).
        self.handle_view = memoryview(self.handle_data)
        self.mount_id = ffi.new("int *")


def name_to_handle_at(dirfd: int, path: bytes, flags: int) -> tuple[FileHandle, int]:
    """name_to_handle_at(2): the file handle of ``path`` in ``dirfd`` and its mount id.

    With ``path`` ``b""`` and ``AT_EMPTY_PATH`` it names ``dirfd`` itself (an O_PATH descriptor
    will do); add ``AT_SYMLINK_FOLLOW`` to follow a final symlink (not followed by default).

    :raises OSError: EOPNOTSUPP when the file system cannot make handles, EOVERFLOW if a handle
        exceeds ``MAX_HANDLE_SZ``, or what resolving ``path`` fails with.
    """
    try:
        buffers = _per_thread.buffers
    except AttributeError:
        buffers = _per_thread.buffers = _ThreadBuffers()
    data = buffers.handle_data
    _FILE_HANDLE_HEAD.pack_into(data, 0, MAX_HANDLE_SZ, 0)
    if _name_to_handle_at(dirfd, path, buffers.handle, buffers.mount_id, flags) != 0:
        _raise("name_to_handle_at", dirfd, path, flags)
    size, handle_type = _FILE_HANDLE_HEAD.unpack_from(data)
    start = _FILE_HANDLE_HEAD.size
    handle = buffers.handle_view[start:start + size].tobytes()
    return _tuple_new(FileHandle, (handle_type, handle)), buffers.mount_id[0]


def open_by_handle_at(mount_fd: int, handle: FileHandle, flags: int) -> int:
    """open_by_handle_at(2): a new descriptor of the inode ``handle`` names, opened with
    ``flags`` (``O_PATH`` included); ``mount_fd`` is any descriptor on the handle's mount
    opened for real (``O_RDONLY``: the kernel answers EBADF for an O_PATH one).

    :raises OSError: EPERM without CAP_DAC_READ_SEARCH, ESTALE when the inode no longer exists,
        ELOOP when ``flags`` lacks ``O_PATH`` and the inode is a symlink.
    """
    fd = _open_by_handle_at(mount_fd, handle.packed(), flags)
    if fd < 0:
        _raise("open_by_handle_at", mount_fd, handle.handle_type, flags)
    return fd


def statx(dirfd: int, path: bytes, flags: int,
          mask: int = STATX_BASIC_STATS | STATX_MNT_ID) -> Statx:
    """statx(2) of ``path`` in ``dirfd`` (``b""`` with ``AT_EMPTY_PATH``: ``dirfd`` itself).

    The mount id is 0 when the kernel does not report it (before Linux 5.8); everything else
    is what ``os.stat`` would give (same ``st_dev`` encoding).
    """
    try:
        buffers = _per_thread.buffers
    except AttributeError:
        buffers = _per_thread.buffers = _ThreadBuffers()
    if _statx(dirfd, path, flags, mask, buffers.statx) != 0:
        _raise("statx", dirfd, path, flags, mask)
    # One unpack of the raw struct: reading 20 fields through cffi costs three times as much.
    (got, blksize, nlink, uid, gid, mode, ino, size, blocks, atime, atime_nsec, ctime,
     ctime_nsec, mtime, mtime_nsec, rdev_major, rdev_minor, dev_major, dev_minor,
     mnt_id) = _STATX_LAYOUT.unpack_from(buffers.statx_data)
    return _tuple_new(Statx, (
        ino, size, blocks, atime, mtime, ctime, atime_nsec, mtime_nsec, ctime_nsec, mode, nlink,
        uid, gid, _make(rdev_major, rdev_minor), blksize, _make(dev_major, dev_minor),
        mnt_id if got & STATX_MNT_ID else 0))


# --- Sandbox: mount, umount2, pivot_root (unshare is above) ----------------------------------
# The namespace sandbox needs them and ``os`` has none (Python 3.11).  pivot_root has no glibc
# wrapper before 2.36, so it goes through syscall() with the per-architecture number.

ffi.cdef("""
    int mount(const char *source, const char *target, const char *filesystemtype,
              unsigned long mountflags, const void *data);
    int umount2(const char *target, int flags);
""")

# <sys/mount.h>
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MNT_DETACH = 0x2
# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
#: pivot_root(2) per ``platform.machine()``.
_PIVOT_ROOT_SYSCALLS = {"x86_64": 155, "aarch64": 41, "riscv64": 41}


def _cstring(value: str | bytes | None) -> object:
    if value is None:
        return ffi.NULL
    return value.encode() if isinstance(value, str) else value


def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int, data: str | bytes | None = None) -> None:
    """mount(2); ``None`` passes NULL (a propagation change or a bind mount has no type)."""
    if _libc.mount(_cstring(source), _cstring(target), _cstring(fstype), flags,
                   _cstring(data)) != 0:
        _raise("mount", source, target, fstype, hex(flags))


def umount2(target: str | bytes, flags: int) -> None:
    """umount2(2), e.g. with ``MNT_DETACH`` to detach the old root after pivot_root."""
    if _libc.umount2(_cstring(target), flags) != 0:
        _raise("umount2", target, flags)


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    """pivot_root(2), as a raw system call."""
    number = _PIVOT_ROOT_SYSCALLS.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: no syscall number known for {platform.machine()}")
    # Variadic arguments must be cdata: pass the strings as char pointers.
    new_root_c = ffi.new("char[]", _cstring(new_root))
    put_old_c = ffi.new("char[]", _cstring(put_old))
    if _libc.syscall(number, ffi.cast("char *", new_root_c), ffi.cast("char *", put_old_c)) != 0:
        _raise("pivot_root", new_root, put_old)


# --- openat2(2): resolution confined to a folder (Linux 5.6; no glibc wrapper) -------------------
#: The syscall number is the same on every architecture (it came after the table unification).
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
#: False once the kernel (or a seccomp filter) answered ENOSYS: callers fall back to openat.
openat2_available = True
#: ``struct open_how`` per (flags, mode, resolve): callers use a handful, and building one costs
#: more than the system call.  Read-only once built, so threads may share them.
_open_hows: dict[tuple[int, int, int], object] = {}
_OPEN_HOW_SIZE = ffi.sizeof("struct open_how")
#: openat2(number, dirfd, path, how, size), the path a ``bytes`` (see :func:`_syscall_as`).
_openat2_syscall = _syscall_as("long (*)(long, int, const char *, struct open_how *, size_t)")


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2) with ``struct open_how``: returns the new descriptor.

    ``RESOLVE_IN_ROOT`` treats ``dirfd`` as the root of the walk (an absolute symlink or a
    ``..`` cannot climb above it) and ``RESOLVE_NO_MAGICLINKS`` refuses ``/proc/*/fd`` style
    links on the way.  Raises ``OSError(ENOSYS)`` on kernels without it, after which
    :data:`openat2_available` is False.
    """
    global openat2_available
    how = _open_hows.get((flags, mode, resolve))
    if how is None:
        how = _open_hows[flags, mode, resolve] = ffi.new(
            "struct open_how *", {"flags": flags, "mode": mode, "resolve": resolve})
    fd = _openat2_syscall(_SYS_OPENAT2, dirfd, path, how, _OPEN_HOW_SIZE)
    if fd < 0:
        if ffi.errno == errno.ENOSYS:
            openat2_available = False
        _raise("openat2", dirfd, path, flags, mode, resolve)
    return fd
