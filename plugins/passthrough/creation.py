"""What every creation (CREATE, MKDIR, MKNOD, SYMLINK) shares: who creates, with which umask,
and the security label the guest attached.

- The node is created with the caller's (translated) uid/gid (``state.ids.acting_as_caller``),
  so the caller owns it and the host kernel checks the parent folder's permissions as the
  caller.
- With POSIX ACLs the guest sends its mode unmasked (DONT_MASK) and its umask separately; the
  umask is then applied by the host kernel, in this thread only (:func:`thread_umask`), so that a
  default ACL of the parent replaces it as POSIX says.  Without DONT_MASK the mode arrives
  masked and the thread keeps the daemon's umask 0.
- With ``--security-label`` (SECURITY_CTX) the guest attaches the new node's security context:
  an xattr name (passed through ``--xattrmap``) and value.  It is set before the node is visible
  where the file system allows (O_TMPFILE then linkat, see ``file_ops``), otherwise right after
  creation, and the node is removed again when that fails, so a node never exists unlabelled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from virtiofsd.fuse import abi
from virtiofsd.sys.thread_fs import thread_umask
from virtiofsd_plugins.inode_handles.store import O_PATH_FLAGS

_DONT_MASK = int(abi.InitFlag.DONT_MASK)
_SECURITY_CTX = int(abi.InitFlag.SECURITY_CTX)


def as_creator(state: Any, req: Any, umask: int | None) -> contextlib.AbstractContextManager[None]:
    """A context that runs a creation as the caller (with its host ids, ``--translate-uid/gid``),
    with the guest's ``umask`` when the session sends modes unmasked (``None``: SYMLINK, which
    has no mode)."""
    if umask is not None and req.session.flags & _DONT_MASK:
        return _as_creator_with_umask(state, req, umask)
    return state.ids.acting_as_caller(req)


@contextlib.contextmanager
def _as_creator_with_umask(state: Any, req: Any, umask: int) -> Iterator[None]:
    with state.ids.acting_as_caller(req), thread_umask(umask):
        yield


def security_context(state: Any, req: Any) -> tuple[bytes, bytes] | None:
    """The (host xattr name, value) to label a node created by ``req`` with, or ``None``."""
    if req.security_context is None or not req.session.flags & _SECURITY_CTX:
        return None
    name, value = req.security_context
    return state.xattr_name_to_host(req, name), value


def label_new_node(state: Any, req: Any, parent_fd: int, name: bytes,
                   context: tuple[bytes, bytes] | None, is_dir: bool) -> int:
    """Open the node just created as ``name`` (O_PATH), label it with ``context`` and return
    the descriptor; when labelling fails the node is removed and the error raised."""
    path_fd = os.open(name, O_PATH_FLAGS, dir_fd=parent_fd)
    if context is None:
        return path_fd
    try:
        os.setxattr(state.magic_link_path(path_fd), context[0], context[1])
    except BaseException:
        os.close(path_fd)
        with contextlib.suppress(OSError):
            if is_dir:
                os.rmdir(name, dir_fd=parent_fd)
            else:
                os.unlink(name, dir_fd=parent_fd)
        raise
    return path_fd

