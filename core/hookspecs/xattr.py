"""Extended-attribute name mapping (``--xattrmap``), answered by the ``xattrmap`` policy plugin.

The passthrough file system calls these for every name of GETXATTR, SETXATTR, REMOVEXATTR and
of a security context (to host), and for every name LISTXATTR finds (to guest); ``req`` is
``None`` when it asks at start (whether ``security.capability`` is renamed).

``None`` means "no opinion" for pluggy, so a mapping hook that hides or refuses a name returns an
explicit result object, never ``None``, for that.
"""

from __future__ import annotations

from typing import Any

from virtiofsd.hookspecs import hookspec


@hookspec(firstresult=True)
def virtiofsd_xattr_to_host(req: Any, name: bytes) -> Any:
    """Map an attribute name the guest sent to the host's name.

    :returns: the host name as ``bytes``, or ``None`` when no mapping plugin is loaded (the name
        passes unchanged).
    :raises virtiofsd.FuseError: the name is refused (EPERM for ``bad``, ENOTSUP for
        ``unsupported``).
    """


@hookspec(firstresult=True)
def virtiofsd_xattr_to_guest(req: Any, name: bytes) -> Any:
    """Map a host attribute name (from LISTXATTR) to what the guest sees.

    :returns: the guest name as ``bytes``, ``False`` to hide the name from the guest, or ``None``
        when no mapping plugin is loaded.
    """
