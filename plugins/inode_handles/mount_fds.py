"""The mount-fd table: mount id -> a descriptor on that mount, for ``open_by_handle_at``.

A file handle is only meaningful on its mount, and ``open_by_handle_at`` takes a descriptor on
that mount (a real open: the kernel refuses an O_PATH one).  The table finds the mount's root in
``/proc/self/mountinfo`` (opened once, when the store is built, and read again from the start
whenever a mount id is new), opens it read-only, and checks with ``statx`` that what it opened
is that very mount (a mount point can be covered by a later mount, or outside the sandbox).

When that fails (mountinfo unreadable inside a sandbox, the mount point out of reach or
covered), the inode being looked up serves instead, if it is a folder: any descriptor on the
mount will do.  Descriptors of the table are the daemon's own (one per mount) and live as long
as the store.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading

from virtiofsd.sandbox import read_mountinfo
from virtiofsd.sys import ffi

log = logging.getLogger(__name__)

_STATX_FLAGS = ffi.AT_EMPTY_PATH | ffi.AT_SYMLINK_NOFOLLOW


def unescape_mountinfo(field: str) -> str:
    r"""A mountinfo path with its octal escapes (``\040`` for a space) decoded."""
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape")
    out = bytearray()
    index = 0
    while index < len(raw):
        if raw[index:index + 1] == b"\\" and raw[index + 1:index + 4].isdigit():
            out.append(int(raw[index + 1:index + 4], 8))
            index += 4
        else:
            out.append(raw[index])
            index += 1
    return out.decode("utf-8", "surrogateescape")


def mount_points(mountinfo: str) -> dict[int, str]:
    """Mount id -> mount point, from the text of ``/proc/PID/mountinfo``."""
    points = {}
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and fields[0].isdigit():
            points[int(fields[0])] = unescape_mountinfo(fields[4])
    return points


class MountFds:
    """Mount id -> a read-only descriptor on that mount; thread-safe, filled lazily."""

    def __init__(self, mountinfo_path: str | None = None) -> None:
        """``mountinfo_path`` ``None``: this process's mountinfo, read through the sandbox's
        descriptor (:func:`virtiofsd.sandbox.read_mountinfo`: the path no longer exists inside
        the namespace sandbox); a path (tests): that file."""
        self._mountinfo_path = mountinfo_path
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def get(self, mnt_id: int, path_fd: int, file_type: int) -> int:
        """A descriptor on mount ``mnt_id``, where ``path_fd`` (an O_PATH descriptor of type
        ``file_type``) lives.

        :raises OSError: no descriptor on that mount can be opened (ENOENT when the mount is
            not listed and ``path_fd`` is not a folder).
        """
        fd = self._fds.get(mnt_id)
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(mnt_id)
            if fd is None:
                fd = self._open(mnt_id, path_fd, file_type)
                self._fds[mnt_id] = fd
            return fd

    def _open(self, mnt_id: int, path_fd: int, file_type: int) -> int:
        point = self._mount_points().get(mnt_id)
        if point is not None:
            try:
                return _open_checked(point, None, mnt_id)
            except OSError as exc:
                log.debug("mount %d at %s: %s; using the inode looked up", mnt_id, point, exc)
        if file_type != stat.S_IFDIR:
            raise OSError(errno.ENOENT, f"no descriptor on mount {mnt_id}: its root is out of "
                          "reach and this inode is not a folder")
        return _open_checked(".", path_fd, mnt_id)

    def _mount_points(self) -> dict[int, str]:
        try:
            if self._mountinfo_path is None:
                text = read_mountinfo()
            else:
                with open(self._mountinfo_path, "rb") as stream:
                    text = stream.read()
        except OSError as exc:
            log.debug("cannot read the mountinfo (%s): mount fds come from the inodes themselves",
                      exc)
            return {}
        return mount_points(text.decode("utf-8", "surrogateescape"))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __len__(self) -> int:
        return len(self._fds)


def _open_checked(path: str, dir_fd: int | None, mnt_id: int) -> int:
    """Open the folder ``path`` read-only and make sure it is on mount ``mnt_id``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        found = ffi.statx(fd, b"", _STATX_FLAGS).mnt_id
        if found != mnt_id:
            raise OSError(errno.ESTALE, f"{path} is on mount {found}, not {mnt_id} (covered?)")
    except BaseException:
        os.close(fd)
        raise
    return fd
