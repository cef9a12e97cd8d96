"""HANDLE_KILLPRIV_V2: clearing setuid and setgid for the guest on write and truncation.

With HANDLE_KILLPRIV_V2 the guest kernel leaves this clearing to the daemon and flags the
requests that need it (WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID with a size, OPEN_KILL_SUIDGID
with O_TRUNC: the caller lacks CAP_FSETID).  The contract (linux/fuse.h) is Linux's own rule for
a local file: setuid is cleared, setgid only when the file has group-execute permission (setgid
without it marks mandatory locking and grants nothing).

Lowering CAP_FSETID and letting the host kernel decide, as the Rust daemon does, breaks the
second half on Linux 6.x: the kernel then also clears setgid without group-execute for a writer
outside the file's group, and the daemon is outside it (it writes as itself, with no
supplementary groups), while the guest's caller was a member.  So the daemon applies the rule
itself, before the data changes, and the write or truncation keeps CAP_FSETID: the kernel clears
nothing more.  security.capability is still removed by the host kernel on write and truncation
(that does not depend on CAP_FSETID).  When the host refuses the chmod (a daemon that does not
own the file and lacks CAP_FOWNER, as a rootless one may), the kernel decides after all, as for
a writer without CAP_FSETID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

from virtiofsd.fuse import abi
from virtiofsd.sys.credentials import without_fsetid

_KILLPRIV_V2 = int(abi.InitFlag.HANDLE_KILLPRIV_V2)


def kills_suidgid(req: Any, flag: int) -> bool:
    """Whether the request's kill-suidgid ``flag`` counts: only under HANDLE_KILLPRIV_V2."""
    return bool(flag and req.session.flags & _KILLPRIV_V2)


def bits_to_clear(mode: int) -> int:
    """The setuid/setgid bits a flagged write or truncation clears from ``mode``."""
    clear = mode & stat.S_ISUID
    if mode & stat.S_IXGRP:
        clear |= mode & stat.S_ISGID
    return clear


@contextlib.contextmanager
def clearing_suidgid(kill: bool, mode: Callable[[], int],
                     chmod: Callable[[int], None]) -> Iterator[None]:
    """Run the block (a write or a truncation) as HANDLE_KILLPRIV_V2 asks when ``kill``.

    :param mode: the file's current ``st_mode``;
    :param chmod: sets the file's permission bits.
    """
    if not kill:
        yield
        return
    current = mode()
    clear = bits_to_clear(current)
    cleared = True
    if clear:
        try:
            chmod(stat.S_IMODE(current) & ~clear)
        except OSError as err:
            if err.errno != errno.EPERM:
                raise
            cleared = False
    with without_fsetid(not cleared):
        yield


def clearing_suidgid_of_fd(kill: bool, fd: int) -> contextlib.AbstractContextManager[None]:
    """:func:`clearing_suidgid` for a file open for I/O as ``fd``."""
    return clearing_suidgid(kill, lambda: os.fstat(fd).st_mode,
                            lambda bits: os.fchmod(fd, bits))


def clearing_suidgid_of_path_fd(path_fd: int,
                                proc_self_fd: int) -> contextlib.AbstractContextManager[None]:
    """:func:`clearing_suidgid` for an inode known by its O_PATH descriptor (before a flagged
    O_TRUNC open): the mode changes through its /proc/self/fd link."""
    return clearing_suidgid(True, lambda: os.fstat(path_fd).st_mode,
                            lambda bits: os.chmod(str(path_fd), bits, dir_fd=proc_self_fd))
