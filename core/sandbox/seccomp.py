"""``--seccomp none|kill|log|trap``: the system-call allow-list, through libseccomp (pyseccomp).

Every system call outside :data:`virtiofsd.sandbox.syscalls.ALLOWED` and the plugins' additions
(hook ``virtiofsd_seccomp_syscalls``) gets the chosen action: ``kill`` ends the whole process
(SECCOMP_RET_KILL_PROCESS), ``log`` lets it through and has the kernel log it (audit), ``trap``
sends SIGSYS.  ``sendto`` is added with ``--syslog``, as the Rust daemon does.

The filter is loaded with TSYNC, so it covers every thread of the process; the daemon loads it
before it accepts the front-end, so the worker threads, started later, inherit it anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pyseccomp

from virtiofsd.config import Seccomp
from virtiofsd.errors import ConfigError
from virtiofsd.sandbox.syscalls import ALLOWED, ALLOWED_WITH_FIRST_ARGUMENT, SYSLOG

log = logging.getLogger(__name__)

ACTIONS = {
    Seccomp.KILL: pyseccomp.KILL_PROCESS,
    Seccomp.LOG: pyseccomp.LOG,
    Seccomp.TRAP: pyseccomp.TRAP,
}


def allowed_syscalls(config: Any, plugin_requests: Iterable[Iterable[str]] = ()) -> set[str]:
    """The names the filter allows for ``config``, with what the plugins asked for."""
    names = set(ALLOWED)
    if config.syslog:
        names.update(SYSLOG)
    for requested in plugin_requests:
        names.update(requested or ())
    return names


def build_filter(action: int, names: Iterable[str]) -> pyseccomp.SyscallFilter:
    """A filter that allows ``names`` (skipping those this architecture lacks) and applies
    ``action`` to everything else, for every thread (TSYNC)."""
    syscall_filter = pyseccomp.SyscallFilter(action)
    arch = pyseccomp.system_arch()
    for name in sorted(names):
        if pyseccomp.resolve_syscall(arch, name) < 0:
            log.debug("seccomp: no system call %s on this architecture", name)
            continue
        syscall_filter.add_rule(pyseccomp.ALLOW, name)
    for name, first_argument in ALLOWED_WITH_FIRST_ARGUMENT.items():
        syscall_filter.add_rule(pyseccomp.ALLOW, name,
                                pyseccomp.Arg(0, pyseccomp.EQ, first_argument))
    syscall_filter.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    return syscall_filter


def apply_seccomp(config: Any, pm: Any) -> None:
    """Load the filter ``--seccomp`` asks for (nothing with ``none``)."""
    mode = Seccomp(config.seccomp)
    if mode is Seccomp.NONE:
        return
    names = allowed_syscalls(config, pm.hook.virtiofsd_seccomp_syscalls(config=config))
    try:
        build_filter(ACTIONS[mode], names).load()
    except OSError as err:
        raise ConfigError(f"--seccomp {mode.value}: cannot load the filter: {err}") from err
    log.debug("seccomp: %s for all but %d system calls", mode.value, len(names))
