"""Capabilities: keep what a file server acting for many users needs, and nothing else.

Kept (both reference daemons): CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD,
SETFCAP; plus DAC_READ_SEARCH when inodes are held by file handles (``open_by_handle_at`` needs
it), or when a plugin asks for it through ``virtiofsd_sandbox_capabilities``.  ``--modcaps``
adds (``+name``) or removes (``-name``) capabilities from that set.

The result becomes the effective and permitted sets; the inheritable and bounding sets are
emptied (as the Rust daemon's ``capng_apply(CAPNG_SELECT_BOTH)`` does), so that no ``execve``
could bring anything back.  The bounding set only limits what ``execve`` and the inheritable set
may gain, so an empty one takes nothing from the running daemon.  A process can only lose
capabilities: a capability it does not have is not kept.  Where the user asked for it by name
(``--modcaps=+name``) that is refused when running as root, as the Rust daemon refuses ("can't
apply the child capabilities"), and warned about otherwise (the Rust daemon leaves an
unprivileged process's capabilities alone and says nothing).

Capability sets are per thread, so this runs before any thread exists (the worker threads
inherit the result).  :mod:`virtiofsd.sys.credentials` later raises DAC_OVERRIDE again in a
thread's effective set, from the permitted set kept here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

import prctl

from virtiofsd.errors import ConfigError

log = logging.getLogger(__name__)

#: The capabilities a file server needs (the Rust and C daemons' set).
DEFAULT_CAPABILITIES = frozenset({
    "chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod", "setfcap",
})
#: Needed by ``open_by_handle_at``: inodes held as file handles, handle-based migration.
FILE_HANDLE_CAPABILITY = "dac_read_search"

_CAP_LAST_CAP = "/proc/sys/kernel/cap_last_cap"


def capability_number(name: str) -> int:
    """``"chown"``, ``"CHOWN"`` or ``"cap_chown"`` -> its number.

    :raises ConfigError: no such capability.
    """
    word = name.strip().lower()
    word = word[4:] if word.startswith("cap_") else word
    number = getattr(prctl, "CAP_" + word.upper(), None)
    if word == "last_cap" or not isinstance(number, int) or number not in prctl.ALL_CAPS:
        raise ConfigError(f"--modcaps: unknown capability {name!r}")
    return number


def parse_modcaps(text: str | None) -> tuple[frozenset[str], frozenset[str]]:
    """``+sys_admin:-chown`` -> (to add, to remove), as lower-case names without ``cap_``.

    :raises ConfigError: an item has no ``+``/``-`` or names no capability.
    """
    add: set[str] = set()
    remove: set[str] = set()
    for item in filter(None, (text or "").split(":")):
        sign, name = item[:1], item[1:]
        if sign not in "+-" or not sign:
            raise ConfigError(f"--modcaps: {item!r} must start with + or -")
        capability_number(name)
        word = name.strip().lower().removeprefix("cap_")
        (add if sign == "+" else remove).add(word)
    return frozenset(add), frozenset(remove)


def kept_capabilities(config: Any, plugin_requests: Iterable[Iterable[str]] = ()) -> frozenset[str]:
    """The capability names the daemon keeps for ``config``.

    :param plugin_requests: the results of the ``virtiofsd_sandbox_capabilities`` hook.
    :raises ConfigError: ``--modcaps`` removes a capability that file handles require.
    """
    add, remove = parse_modcaps(config.modcaps)
    required = set()
    if config.inode_file_handles != "never":
        required.add(FILE_HANDLE_CAPABILITY)
    for names in plugin_requests:
        for name in names or ():
            capability_number(name)
            required.add(name.strip().lower().removeprefix("cap_"))
    conflict = sorted(required & remove)
    if conflict:
        raise ConfigError(f"--modcaps: cannot remove {', '.join(conflict)}: the configuration "
                          "needs it (file handles)")
    return frozenset((DEFAULT_CAPABILITIES | required | add) - remove)


def unheld_additions(config: Any) -> list[str]:
    """The capabilities ``--modcaps`` adds (``+name``) that the calling thread does not hold in
    its permitted set, so cannot keep: a root daemon in a container whose bounding set lacks
    them, or a daemon without root."""
    add, _remove = parse_modcaps(config.modcaps)
    return sorted(name for name in add if not getattr(prctl.cap_permitted, name))


def check_additions(config: Any) -> None:
    """Refuse (root) or warn about (others) ``--modcaps`` additions that cannot be kept.

    :raises ConfigError: running as root, and a ``+name`` is not in the permitted set.
    """
    unheld = unheld_additions(config)
    if not unheld:
        return
    names = ", ".join(f"CAP_{name.upper()}" for name in unheld)
    problem = (f"--modcaps={config.modcaps}: this process does not hold {names} (not in its "
               f"permitted set), so it cannot keep {'it' if len(unheld) == 1 else 'them'}")
    if os.geteuid() == 0:
        raise ConfigError(f"{problem}; start the daemon with it (a container's bounding set "
                          "may lack it) or leave it out of --modcaps")
    log.warning("%s; running without it", problem)


def apply_capabilities(names: Iterable[str]) -> None:
    """Reduce the calling thread's capability sets: effective and permitted to those of
    ``names`` it has, inheritable and bounding (when the process may change it: CAP_SETPCAP)
    to none."""
    if threading.active_count() > 1:
        raise RuntimeError("capabilities are per thread: drop them before starting threads")
    keep = {capability_number(name) for name in names}
    every = range(_LAST_CAPABILITY + 1)
    if prctl.cap_effective.setpcap:
        for number in every:
            if prctl.capbset_read(number):
                prctl.capbset_drop(number)
    known = [number for number in every if number in prctl.ALL_CAPS]
    prctl.set_caps(([n for n in known if n not in keep],
                    [prctl.CAP_EFFECTIVE, prctl.CAP_PERMITTED], False),
                   (known, prctl.CAP_INHERITABLE, False))
    log.debug("capabilities kept: %s", ", ".join(sorted(names)) or "none")


def _last_capability() -> int:
    """The highest capability number of the running kernel (read at import: inside a sandbox
    ``/proc/sys`` is out of sight)."""
    try:
        with open(_CAP_LAST_CAP) as stream:
            return int(stream.read())
    except (OSError, ValueError):
        return max(prctl.ALL_CAPS)


_LAST_CAPABILITY = _last_capability()


def drop_capabilities(config: Any, pm: Any) -> frozenset[str]:
    """Apply the set :func:`kept_capabilities` computes for ``config`` and the plugins."""
    names = kept_capabilities(config, pm.hook.virtiofsd_sandbox_capabilities(config=config))
    check_additions(config)
    apply_capabilities(names)
    return names
