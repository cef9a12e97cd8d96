"""How a source daemon tells the destination where each inode the guest holds can be found.

``--migration-mode`` picks the strategy on the source (the destination ignores it and follows
whatever kind of :class:`~.format.Location` arrives, as the Rust daemon does):

- :class:`FindPaths` (``find-paths``): the path of each inode inside the shared folder, read
  from its ``/proc/self/fd`` link; when the link gives none (the inode was unlinked, or the
  link points outside the shared folder), one walk of the shared folder looks for another name
  of the same (device, inode).  An unlinked file that is still open has no path at all: it
  becomes an INVALID location, which the destination's ``--migration-on-error`` decides about.
  ``--migration-confirm-paths`` stats each path found in a link and falls back to the walk when
  it no longer leads to the same inode; since the links are read at switch-over, this catches
  only what a link cannot show: a mount placed over the path, a rename racing the read
  (docs/migration.md).  ``--migration-verify-handles`` attaches a file handle so the
  destination can prove it opened the same inode.
- :class:`FileHandles` (``file-handles``): a file handle and the mount it lives on; the
  destination opens it with ``open_by_handle_at`` (CAP_DAC_READ_SEARCH).  Survives renames and
  unlinked-but-open files, needs the same file system on both sides.

Every strategy locates all inodes in one call at switch-over (the save happens while the guest
is stopped), so each path or handle describes the inode as it is at that moment.
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import stat
from collections.abc import Iterable
from typing import Any

from virtiofsd.sandbox import read_mountinfo
from virtiofsd.sys import ffi
from virtiofsd_plugins.inode_handles.mount_fds import mount_points as parse_mount_points
from virtiofsd_plugins.migration.format import Location, LocationKind

log = logging.getLogger(__name__)

_DELETED_SUFFIX = b" (deleted)"


def mount_points() -> dict[int, bytes]:
    """Mount id -> mount point, from this process's mountinfo (octal escapes decoded; read
    through the sandbox's descriptor, since the path is gone inside the namespace sandbox)."""
    text = read_mountinfo().decode("utf-8", "surrogateescape")
    return {mount_id: os.fsencode(point) for mount_id, point in parse_mount_points(text).items()}


class MigrationStrategy(abc.ABC):
    """Base: the source side of one ``--migration-mode``."""

    name = ""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.shared_dir = os.fsencode(os.path.realpath(config.shared_dir))

    @abc.abstractmethod
    def locate_all(self, state: Any, inodes: Iterable[Any]) -> dict[int, Location]:
        """Node id -> location of every inode in ``inodes`` (the root included)."""

    def verify_handle(self, inode: Any) -> tuple[int, bytes] | None:
        """The file handle to send for ``--migration-verify-handles``; None when not asked."""
        return None


class FindPaths(MigrationStrategy):
    name = "find-paths"

    def locate_all(self, state: Any, inodes: Iterable[Any]) -> dict[int, Location]:
        found: dict[int, Location] = {}
        missing: dict[tuple[int, int], list[Any]] = {}
        for inode in inodes:
            if inode.nodeid == state.inodes.root.nodeid:
                found[inode.nodeid] = Location(LocationKind.ROOT)
                continue
            path = self._path_from_link(state, inode)
            if path is None:
                missing.setdefault((inode.key.dev, inode.key.ino), []).append(inode)
            else:
                found[inode.nodeid] = Location(LocationKind.PATH, path=path)
        if missing:
            log.info("migration: %d inodes have no usable /proc/self/fd path; searching the "
                     "shared folder", len(missing))
            for key, path in self._search(state, set(missing)).items():
                for inode in missing.pop(key):
                    found[inode.nodeid] = Location(LocationKind.PATH, path=path)
        for inodes_left in missing.values():
            for inode in inodes_left:
                found[inode.nodeid] = Location(
                    LocationKind.INVALID,
                    reason=f"no path in the shared folder leads to node {inode.nodeid} "
                           f"(inode {inode.key.ino}): unlinked, or moved out of the folder")
        return found

    def _path_from_link(self, state: Any, inode: Any) -> bytes | None:
        fd = inode.fd  # a handle-backed inode's descriptor lives as long as this name
        try:
            target = os.readlink(str(fd).encode(), dir_fd=state.proc_self_fd)
        except OSError as err:
            log.debug("readlink of node %d failed: %s", inode.nodeid, err)
            return None
        if target.endswith(_DELETED_SUFFIX):
            return None
        prefix = self.shared_dir.rstrip(b"/") + b"/"
        if not target.startswith(prefix):
            return None
        path = target[len(prefix):]
        if self.config.migration_confirm_paths and not self._leads_to(state, path, inode):
            log.info("migration: the path %r of node %d leads to another inode now (covered by "
                     "a mount, or renamed meanwhile); searching the shared folder for it",
                     path, inode.nodeid)
            return None
        return path

    @staticmethod
    def _leads_to(state: Any, path: bytes, inode: Any) -> bool:
        """Whether resolving ``path`` from the shared folder reaches ``inode``: the link names
        the descriptor's dentry, which a mount over the path hides from resolution."""
        try:
            st = os.stat(path, dir_fd=state.inodes.root.fd, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (inode.key.dev, inode.key.ino)

    def _search(self, state: Any, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """One walk of the shared folder: a path for each wanted (dev, ino) it meets."""
        found: dict[tuple[int, int], bytes] = {}
        for folder, dirs, files, folder_fd in os.fwalk(b".", dir_fd=state.inodes.root.fd):
            for name in dirs + files:
                try:
                    st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in wanted and key not in found:
                    found[key] = os.path.normpath(os.path.join(folder, name))
            if len(found) == len(wanted):
                break
        return found

    def verify_handle(self, inode: Any) -> tuple[int, bytes] | None:
        if not self.config.migration_verify_handles:
            return None
        handle, _mount_id = ffi.name_to_handle_at(inode.fd, b"", ffi.AT_EMPTY_PATH)
        return handle.handle_type, handle.handle


class FileHandles(MigrationStrategy):
    name = "file-handles"

    def locate_all(self, state: Any, inodes: Iterable[Any]) -> dict[int, Location]:
        root = state.inodes.root
        _handle, root_mount = ffi.name_to_handle_at(root.fd, b"", ffi.AT_EMPTY_PATH)
        points: dict[int, bytes] | None = None
        found: dict[int, Location] = {}
        for inode in inodes:
            if inode.nodeid == root.nodeid:
                found[inode.nodeid] = Location(LocationKind.ROOT)
                continue
            try:
                handle, mount_id = ffi.name_to_handle_at(inode.fd, b"", ffi.AT_EMPTY_PATH)
            except OSError as err:
                found[inode.nodeid] = Location(
                    LocationKind.INVALID, reason=f"no file handle for node {inode.nodeid}: {err}")
                continue
            mount = b""
            if mount_id != root_mount:
                if points is None:
                    points = mount_points()
                mount = self._relative_mount(points.get(mount_id))
                if mount is None:
                    found[inode.nodeid] = Location(
                        LocationKind.INVALID,
                        reason=f"node {inode.nodeid} is on mount {mount_id}, not under the "
                               "shared folder")
                    continue
            found[inode.nodeid] = Location(LocationKind.HANDLE, path=mount,
                                           handle_type=handle.handle_type, handle=handle.handle)
        return found

    def _relative_mount(self, point: bytes | None) -> bytes | None:
        if point is None:
            return None
        prefix = self.shared_dir.rstrip(b"/") + b"/"
        if not point.startswith(prefix):
            return None
        return point[len(prefix):]


def open_location(root_fd: int, location: Location, mount_fds: dict[bytes, int]) -> int:
    """The destination side: an O_PATH descriptor of the inode ``location`` names.

    ``mount_fds`` caches descriptors of mount roots for file handles (the caller closes them).

    :raises OSError: the inode cannot be opened (errno says why).
    """
    if location.kind is LocationKind.PATH:
        return os.open(location.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    if location.kind is LocationKind.HANDLE:
        mount_fd = mount_fds.get(location.path)
        if mount_fd is None:
            mount_fd = os.open(location.path or b".", os.O_RDONLY | os.O_DIRECTORY |
                               os.O_CLOEXEC, dir_fd=root_fd)
            mount_fds[location.path] = mount_fd
        return ffi.open_by_handle_at(mount_fd, ffi.FileHandle(location.handle_type,
                                                              location.handle),
                                     os.O_PATH | os.O_CLOEXEC)
    if location.kind is LocationKind.INVALID:
        raise OSError(errno.ENOENT, location.reason)
    raise OSError(errno.EINVAL, f"location kind {location.kind.name} names no single inode")


def check_same_inode(fd: int, file_type: int, verify: tuple[int, bytes] | None) -> None:
    """Check what the destination opened: the type the source had and, with
    ``--migration-verify-handles`` on the source, the same file handle.

    :raises OSError: ESTALE on a mismatch.
    """
    st = os.fstat(fd)
    if stat.S_IFMT(st.st_mode) != file_type:
        raise OSError(errno.ESTALE, f"opened a {stat.filemode(st.st_mode)[0]!r} file where the "
                      "source had another type")
    if verify is not None:
        handle, _mount = ffi.name_to_handle_at(fd, b"", ffi.AT_EMPTY_PATH)
        if (handle.handle_type, handle.handle) != verify:
            raise OSError(errno.ESTALE, "the file handle differs from the source's: another "
                          "inode now has this path")
