"""Validation of the names the guest sends: one path component, never a path.

Every name arrives from the guest as ``bytes`` and is used relative to a folder descriptor, so a
name that is not a single component could reach outside that folder (``a/../../etc``) and a NUL
would be cut short by the C library.  The guest kernel never sends such names; a hostile guest
can, so they are refused before any system call:

- a ``/`` or a NUL byte: EINVAL (the answer of the C daemon, which checks the same);
- the empty name: ENOENT, what the kernel answers for an empty path;
- ``.`` and ``..`` where a new name is created, removed or renamed: EINVAL.  LOOKUP accepts them
  (an NFS-exported guest asks for ``..``), and the caller keeps ``..`` of the root at the root.
"""

from __future__ import annotations

import errno

from virtiofsd.errors import FuseError

_DOTS = (b".", b"..")
#: The bytes a component cannot hold, as ints: ``int in bytes`` is one memchr, where
#: ``bytes in bytes`` first tries the needle as an int and pays for a TypeError (LOOKUP checks
#: every name).
_SLASH = ord("/")
_NUL = 0


def check_lookup_name(name: bytes) -> None:
    """Refuse anything but one path component; ``.`` and ``..`` pass."""
    if not name:
        raise FuseError(errno.ENOENT, "empty name")
    if _SLASH in name or _NUL in name:
        raise FuseError(errno.EINVAL, f"name {name!r} is not a single path component")


def check_new_name(name: bytes) -> None:
    """Refuse anything but one path component other than ``.`` and ``..``."""
    check_lookup_name(name)
    if name in _DOTS:
        raise FuseError(errno.EINVAL, f"name {name!r} cannot be created, removed or renamed")
