"""What a plugin needs from the sandbox: extra system calls and capabilities.

Both hooks are called once, after :func:`~virtiofsd.hookspecs.lifecycle.virtiofsd_configure`
(so a plugin may answer from the state it built) and before any worker thread starts.  Every
implementation's answer is added; nothing can be taken away here (``--modcaps`` is the user's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from virtiofsd.hookspecs import hookspec


@hookspec
def virtiofsd_seccomp_syscalls(config: Any) -> Iterable[str]:
    """System-call names (as in ``man 2 syscalls``: ``open_by_handle_at``) the plugin makes
    while serving with ``config``, beyond the base list every configuration has
    (:data:`virtiofsd.sandbox.syscalls.BASE`).

    Answer from ``config``, so that a feature's calls are allowed only where it is on: the
    built-in plugins ask for the file-handle calls (the ``prefer`` and ``mandatory`` inode
    stores, the migration strategies), the xattr calls (``--xattr``) and ``flock``
    (``-o flock``) this way.  A name the architecture does not have is skipped.  Under
    ``--seccomp kill`` a call that no list allows kills the daemon, so a plugin must name every
    call its code paths can make.
    """


@hookspec
def virtiofsd_sandbox_capabilities(config: Any) -> Iterable[str]:
    """Capability names (``dac_read_search``; case and a ``cap_`` prefix do not matter) the
    plugin needs kept, beyond CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD and
    SETFCAP.  ``--modcaps`` may not remove them: the daemon refuses to start instead."""
