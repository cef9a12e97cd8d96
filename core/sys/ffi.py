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

The mount id (``statx`` with ``STATX_MNT_ID``) and file handles come in later issues and belong
here too.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Sequence

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
    struct open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
""")
_libc = ffi.dlopen(None)

# <fcntl.h> / <linux/fcntl.h>
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
# <linux/fs.h>
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2
# <linux/stat.h>: the two special nanosecond values of utimensat(2).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
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

#: ``(uid_t)-1``: "leave this id unchanged" for the set*id calls.
UNCHANGED = 0xFFFFFFFF


def _raise(call: str, *args: object) -> None:
    err = ffi.errno
    shown = ", ".join(repr(arg) for arg in args)
    raise OSError(err, f"{os.strerror(err)}: {call}({shown})")


def _credential_syscall(index: int, call: str, *args: int) -> None:
    if _SYSCALLS is None:
        raise OSError(errno.ENOSYS, f"{call}: no syscall number known for {platform.machine()}")
    number = _SYSCALLS[index]
    if _libc.syscall(number, *(ffi.cast("long", arg) for arg in args)) != 0:
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
    if _libc.syscall(_SYSCALLS[0], ffi.cast("long", len(groups)), ffi.cast("void *", array)) != 0:
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
_OPEN_HOW_SIZE = ffi.cast("long", ffi.sizeof("struct open_how"))


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2) with ``struct open_how``: returns the new descriptor.

    ``RESOLVE_IN_ROOT`` treats ``dirfd`` as the root of the walk (an absolute symlink or a
    ``..`` cannot climb above it) and ``RESOLVE_NO_MAGICLINKS`` refuses ``/proc/*/fd`` style
    links on the way.  Raises ``OSError(ENOSYS)`` on kernels without it, after which
    :data:`openat2_available` is False.
    """
    global openat2_available
    key = (flags, mode, resolve)
    how = _open_hows.get(key)
    if how is None:
        how = _open_hows[key] = ffi.new("struct open_how *",
                                        {"flags": flags, "mode": mode, "resolve": resolve})
    c_path = ffi.new("char[]", path)  # kept alive by this name for the duration of the call
    fd = _libc.syscall(_SYS_OPENAT2, ffi.cast("long", dirfd), c_path, how, _OPEN_HOW_SIZE)
    if fd < 0:
        if ffi.errno == errno.ENOSYS:
            openat2_available = False
        _raise("openat2", dirfd, path, flags, mode, resolve)
    return fd
