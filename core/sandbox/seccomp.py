"""``--seccomp none|kill|log|trap``: the system-call allow-list, through libseccomp (pyseccomp).

Every system call outside :data:`virtiofsd.sandbox.syscalls.BASE` and what the configuration
adds (:func:`configured_syscalls`) gets the chosen action: ``kill`` ends the whole process
(SECCOMP_RET_KILL_PROCESS), ``log`` lets it through and has the kernel log it (audit), ``trap``
sends SIGSYS.  A few calls are allowed only with certain arguments, or answered with an error
instead of the action (:data:`~virtiofsd.sandbox.syscalls.ARGUMENT_RULES`,
:data:`~virtiofsd.sandbox.syscalls.ERRNO_UNLESS_ALLOWED`).

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
from virtiofsd.sandbox.capabilities import FILE_HANDLE_CAPABILITY, parse_modcaps
from virtiofsd.sandbox.syscalls import (
    ARGUMENT_RULES,
    BASE,
    ERRNO_UNLESS_ALLOWED,
    FILE_HANDLE_CALLS,
)

log = logging.getLogger(__name__)

ACTIONS = {
    Seccomp.KILL: pyseccomp.KILL_PROCESS,
    Seccomp.LOG: pyseccomp.LOG,
    Seccomp.TRAP: pyseccomp.TRAP,
}


def configured_syscalls(config: Any, pm: Any) -> set[str]:
    """The names ``config`` adds to :data:`BASE`: what the plugins ``pm`` holds ask for through
    ``virtiofsd_seccomp_syscalls``, and the file-handle calls with
    ``--modcaps=+dac_read_search``: opening file handles is all that capability is for, and the
    Rust README gives that option to the destination of a file-handle migration, whatever its
    inode store.  (``--syslog`` adds nothing: its ``sendto`` is in the base list, since every
    vhost-user reply goes out through it.)"""
    names: set[str] = set()
    for requested in pm.hook.virtiofsd_seccomp_syscalls(config=config):
        names.update(requested or ())
    added, _removed = parse_modcaps(config.modcaps)
    if FILE_HANDLE_CAPABILITY in added:
        names.update(FILE_HANDLE_CALLS)
    return names


def allowed_syscalls(config: Any, pm: Any) -> set[str]:
    """Every name the filter allows without condition for ``config`` and the plugins ``pm``
    holds."""
    return set(BASE) | configured_syscalls(config, pm)


def _exists(arch: int, name: str) -> bool:
    if pyseccomp.resolve_syscall(arch, name) < 0:
        log.debug("seccomp: no system call %s on this architecture", name)
        return False
    return True


def build_filter(action: int, allowed: Iterable[str]) -> pyseccomp.SyscallFilter:
    """A filter that allows ``allowed``, applies the argument rules and the errno answers to the
    calls ``allowed`` leaves out, and ``action`` to everything else, for every thread (TSYNC).
    Names this architecture lacks are skipped."""
    allowed = set(allowed)
    syscall_filter = pyseccomp.SyscallFilter(action)
    arch = pyseccomp.system_arch()
    for name in sorted(allowed):
        if _exists(arch, name):
            syscall_filter.add_rule(pyseccomp.ALLOW, name)
    for name, rule in ARGUMENT_RULES.items():
        if name not in allowed and _exists(arch, name):
            syscall_filter.add_rule(pyseccomp.ALLOW, name,
                                    pyseccomp.Arg(rule.index, pyseccomp.MASKED_EQ, rule.mask,
                                                  rule.value))
    for name, error in ERRNO_UNLESS_ALLOWED.items():
        if name not in allowed and _exists(arch, name):
            syscall_filter.add_rule(pyseccomp.ERRNO(error), name)
    syscall_filter.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    return syscall_filter


def apply_seccomp(config: Any, pm: Any) -> None:
    """Load the filter ``--seccomp`` asks for (nothing with ``none``)."""
    mode = Seccomp(config.seccomp)
    if mode is Seccomp.NONE:
        return
    names = allowed_syscalls(config, pm)
    try:
        build_filter(ACTIONS[mode], names).load()
    except OSError as err:
        raise ConfigError(f"--seccomp {mode.value}: cannot load the filter: {err}") from err
    log.debug("seccomp: %s for all but %d system calls", mode.value, len(names))
