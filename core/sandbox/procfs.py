"""The ``/proc`` descriptors a plugin may need after the sandbox hid ``/proc``.

In the namespace sandbox, ``/proc`` is a fresh proc mount with ``/proc/self/fd`` bound over it,
reachable only through a descriptor opened before ``pivot_root``; ``mountinfo`` is opened through
an ``O_PATH`` descriptor of ``/proc/self`` kept across the pivot.  In the chroot sandbox both are
opened before ``chroot``.  Without a sandbox they are opened on demand.

The sandbox hands them over with :func:`hold`; plugins take copies with
:func:`open_proc_self_fd` and read the mount table with :func:`read_mountinfo`.
"""

from __future__ import annotations

import os

_PROC_SELF_FD = "/proc/self/fd"
_MOUNTINFO = "/proc/self/mountinfo"

_held_proc_self_fd: int | None = None
_held_mountinfo: int | None = None


def hold(proc_self_fd: int, mountinfo_fd: int) -> None:
    """Keep the sandbox's descriptors (ownership passes to this module) for the process's life."""
    global _held_proc_self_fd, _held_mountinfo
    release()
    _held_proc_self_fd, _held_mountinfo = proc_self_fd, mountinfo_fd


def release() -> None:
    """Close the held descriptors (tests; a daemon keeps them until it exits)."""
    global _held_proc_self_fd, _held_mountinfo
    for fd in (_held_proc_self_fd, _held_mountinfo):
        if fd is not None:
            os.close(fd)
    _held_proc_self_fd = _held_mountinfo = None


def open_proc_self_fd() -> int:
    """A new O_PATH descriptor of this process's fd folder (``/proc/self/fd``), owned by the
    caller: reopen an inode with ``openat(fd, str(inode_fd), flags)``.

    :raises OSError: ``/proc`` is not mounted (no sandbox and no procfs).
    """
    if _held_proc_self_fd is not None:
        return os.dup(_held_proc_self_fd)
    return os.open(_PROC_SELF_FD, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def read_mountinfo() -> bytes:
    """The current content of this process's ``mountinfo`` (read afresh at every call)."""
    if _held_mountinfo is None:
        with open(_MOUNTINFO, "rb") as stream:
            return stream.read()
    chunks = []
    offset = 0
    while chunk := os.pread(_held_mountinfo, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
