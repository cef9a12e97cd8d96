"""Run a block as another user, in the calling thread only.

Creation operations (CREATE, MKNOD, MKDIR, SYMLINK) run with the guest caller's uid and gid, so
that the new inode is owned by that user on the host and the host kernel checks the parent
folder's permissions as that user.  The switch uses the raw system calls of
:mod:`virtiofsd.sys.ffi`, which change only the calling thread: other requests served at the
same time keep running as the daemon.

Kernel facts this relies on:

- Only the effective ids change (``setresuid(-1, uid, -1)``): the real and saved ids stay 0, which
  is what allows switching back.  The file-system ids follow the effective ones.
- Moving the effective uid from 0 to another value clears the thread's effective capabilities
  (so CAP_DAC_OVERRIDE no longer bypasses permission checks); moving it back to 0 restores them
  from the permitted set.
- The gid must change before the uid (changing gid needs CAP_SETGID, lost with uid 0), and the
  uid must come back first.

As the Rust daemon does, an id is left alone when the target is 0 (the daemon's own) or already
the current one, so requests from guest root cost no system call.

Supplementary groups: the daemon drops its own at start (CVE-2022-0358), so a guest user whose
write access to a folder comes from a supplementary group would be refused by the host.  When the
guest does not send its groups (no CREATE_SUPP_GROUP extension: Linux before 6.3), the thread puts
CAP_DAC_OVERRIDE back into its effective set after the uid switch, as the Rust daemon does.  That
gives nothing away: the guest kernel has already checked the caller's permissions (virtio-fs
mounts with ``default_permissions``), and a guest kernel that lies can claim uid 0 anyway.  The
uid switch still decides ownership of what is created, and CAP_FSETID stays off, so the kernel
still clears S_ISGID on files a non-member creates in a setgid folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import prctl

from virtiofsd.sys import ffi

log = logging.getLogger(__name__)

_KEEP = ffi.UNCHANGED


@contextlib.contextmanager
def thread_credentials(uid: int, gid: int, groups: Sequence[int] = ()) -> Iterator[None]:
    """Switch the calling thread's effective ``gid`` then ``uid`` (and its supplementary
    ``groups`` when given) for the duration of the block; restore them on the way out.

    :raises OSError: a switch was refused; whatever was already changed is restored first.
    """
    current_uid = os.geteuid()
    current_gid = os.getegid()
    change_uid = uid != 0 and uid != current_uid
    change_gid = gid != 0 and gid != current_gid
    change_groups = bool(groups)
    if not (change_uid or change_gid or change_groups):
        yield
        return

    saved_groups = os.getgroups() if change_groups else None
    switched_groups = switched_gid = False
    try:
        if change_groups:
            ffi.setgroups_thread(groups)
            switched_groups = True
        if change_gid:
            ffi.setresgid_thread(_KEEP, gid, _KEEP)
            switched_gid = True
        if change_uid:
            ffi.setresuid_thread(_KEEP, uid, _KEEP)
            if not change_groups:
                _restore_dac_override()
    except BaseException:
        _restore(None, current_gid if switched_gid else None,
                 saved_groups if switched_groups else None)
        raise
    try:
        yield
    finally:
        _restore(current_uid if change_uid else None, current_gid if change_gid else None,
                 saved_groups)


def _restore_dac_override() -> None:
    """Raise CAP_DAC_OVERRIDE in the calling thread's effective set, if it is permitted
    (a daemon run by an ordinary user has nothing to raise, and needs nothing)."""
    if prctl.cap_permitted.dac_override:
        prctl.cap_effective.dac_override = True


def _restore(uid: int | None, gid: int | None, groups: list[int] | None) -> None:
    """Undo a switch, uid first.  A failure here leaves the thread running as the guest user,
    which must never pass silently: it is logged and raised."""
    try:
        if uid is not None:
            ffi.setresuid_thread(_KEEP, uid, _KEEP)
        if gid is not None:
            ffi.setresgid_thread(_KEEP, gid, _KEEP)
        if groups is not None:
            ffi.setgroups_thread(groups)
    except OSError:
        log.critical("could not restore the thread's credentials (uid %s, gid %s)", uid, gid)
        raise


@contextlib.contextmanager
def without_fsetid(drop: bool = True) -> Iterator[None]:
    """Lower CAP_FSETID in the calling thread's effective set for the block (when ``drop``).

    The host kernel clears setuid and setgid on a write, a truncation or an O_TRUNC open only
    when the writer lacks CAP_FSETID.  With HANDLE_KILLPRIV_V2 the guest leaves that clearing
    to the daemon, which runs with the capability: lowering it lets the host kernel do the
    clearing exactly as for the unprivileged guest writer.  Capabilities are per thread, so other
    requests are unaffected.  Nothing happens when the capability is not effective.
    """
    if not drop or not prctl.cap_effective.fsetid:
        yield
        return
    prctl.cap_effective.fsetid = False
    try:
        yield
    finally:
        prctl.cap_effective.fsetid = True
