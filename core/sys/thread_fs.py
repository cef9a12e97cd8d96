"""A umask for the calling thread only.

The daemon's process umask is 0 (the guest applies its own umask to the modes it sends).  With
POSIX ACLs the guest sends modes unmasked (DONT_MASK) together with its umask, and the *host*
kernel must apply that umask at creation, because only the host kernel knows whether the parent
folder has a default ACL, which replaces the umask.  A umask is per process, but a thread that
called ``unshare(CLONE_FS)`` owns a private copy (with the working directory and root), so
requests on other threads keep umask 0.  Each thread unshares once, the first time it needs its
own umask, as the Rust daemon's pool threads do at start.

A thread that unshared no longer sees a later ``chroot``/``pivot_root`` of the main thread:
sandboxes are set up before any request is served, so that never happens.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from virtiofsd.sys import ffi

_private = threading.local()


def _own_fs_context() -> None:
    if not getattr(_private, "unshared", False):
        ffi.unshare(ffi.CLONE_FS)
        _private.unshared = True


@contextlib.contextmanager
def thread_umask(mask: int) -> Iterator[None]:
    """Run the block with umask ``mask`` in the calling thread only, then restore it.

    :raises OSError: the thread could not get a private file-system context (a seccomp
        filter that forbids ``unshare``).
    """
    _own_fs_context()
    previous = os.umask(mask & 0o777)
    try:
        yield
    finally:
        os.umask(previous)
