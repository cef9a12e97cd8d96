"""The id maps of the namespace sandbox's user namespace (``--uid-map`` / ``--gid-map``).

A daemon started by an ordinary user creates a user namespace (see
:mod:`virtiofsd.sandbox.isolation`).  Without maps, its own uid and gid are mapped to themselves
and nothing else exists in the namespace.  ``--uid-map=:inside:outside:count:`` (repeatable)
maps other ranges, typically the user's subordinate ids of ``/etc/subuid``: inside the
namespace, ``inside`` .. ``inside+count-1`` are the host's ``outside`` .. ``outside+count-1``.

The kernel lets an unprivileged process write only the trivial map (its own id, count 1), and
only from outside the namespace for anything else through the setuid helpers ``newuidmap`` and
``newgidmap`` (Debian package ``uidmap``), which check the ranges against ``/etc/subuid`` and
``/etc/subgid``.  As in the Rust daemon, a helper process forked *before* ``unshare`` (so it
stays in the host's namespaces) writes the maps of its parent once the parent has unshared.

The option grammar is the Rust daemon's: the first character is the separator, every other
non-alphanumeric character must be the same one, and exactly three unsigned 32-bit numbers sit
between a leading and a trailing separator.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Sequence

from virtiofsd.errors import ConfigError

log = logging.getLogger(__name__)

ID_LIMIT = 1 << 32

#: What the helper writes to its parent when the maps are in place.
_DONE = b"ok"


class NamespaceMapError(ConfigError):
    """A ``--uid-map``/``--gid-map`` value is malformed, or the maps could not be written."""


@dataclasses.dataclass(frozen=True)
class NamespaceIdRange:
    """``inside`` .. ``inside+count-1`` in the namespace are ``outside`` .. on the host."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        """The range as one line of ``/proc/PID/uid_map`` (and as newuidmap's three arguments)."""
        return f"{self.inside} {self.outside} {self.count}"


def parse_namespace_map(text: str) -> NamespaceIdRange:
    """One ``:namespace_id:host_id:count:`` value (any non-alphanumeric separator).

    :raises NamespaceMapError: the value is empty, mixes separators, lacks the trailing one,
        has not exactly three fields, or a field is not an unsigned 32-bit number.
    """
    if not text or text[0].isalnum():
        raise NamespaceMapError(f"{text!r}: expected :namespace_id:host_id:count: "
                                "(the first character is the separator)")
    separator = text[0]
    if any(not c.isalnum() and c != separator for c in text):
        raise NamespaceMapError(f"{text!r}: a separator differs from the first one, "
                                f"{separator!r}")
    if len(text) < 2 or text[-1] != separator:
        raise NamespaceMapError(f"{text!r}: the map must end with its separator {separator!r}")
    fields = text[1:-1].split(separator)
    if len(fields) != 3:
        raise NamespaceMapError(f"{text!r}: expected exactly three values "
                                f"(namespace_id, host_id, count), got {len(fields)}")
    numbers = []
    for name, field in zip(("namespace_id", "host_id", "count"), fields):
        if not field.isdigit() or not field.isascii():
            raise NamespaceMapError(f"{text!r}: {name} {field!r} is not an unsigned number")
        number = int(field)
        if number >= ID_LIMIT:
            raise NamespaceMapError(f"{text!r}: {name} {number} does not fit in 32 bits")
        numbers.append(number)
    return NamespaceIdRange(*numbers)


def check_namespace_maps(option: str, ranges: Sequence[NamespaceIdRange], euid: int,
                         namespace_sandbox: bool) -> None:
    """Refuse maps where no user namespace is created, as the Rust daemon does: under root (it
    needs no namespace) and with ``--sandbox chroot|none``."""
    if ranges and (euid == 0 or not namespace_sandbox):
        raise NamespaceMapError(f"{option} can only be used by an unprivileged user with the "
                                "namespace sandbox (use '--sandbox namespace', not as root)")


def maps_root(ranges: Sequence[NamespaceIdRange]) -> bool:
    """Whether id 0 of the namespace is mapped (the daemon then becomes it, as in Rust)."""
    return any(r.inside == 0 and r.count > 0 for r in ranges)


class MapWriter:
    """The helper that writes the maps of this process's new user namespace from outside it.

    Use: ``writer = MapWriter.start(uid_map, gid_map)`` before ``unshare``; after it,
    ``writer.finish()``; if ``unshare`` failed, ``writer.abandon()``.
    """

    def __init__(self, pid: int, request: int, reply: int) -> None:
        self._pid = pid
        self._request = request
        self._reply = reply

    @classmethod
    def start(cls, uid_map: Sequence[NamespaceIdRange],
              gid_map: Sequence[NamespaceIdRange]) -> MapWriter:
        """Fork the helper; it waits until :meth:`finish` says the namespace exists."""
        uid, gid = os.geteuid(), os.getegid()
        uid_map = list(uid_map) or [NamespaceIdRange(uid, uid, 1)]
        gid_map = list(gid_map) or [NamespaceIdRange(gid, gid, 1)]
        request_read, request_write = os.pipe2(os.O_CLOEXEC)
        reply_read, reply_write = os.pipe2(os.O_CLOEXEC)
        helper = os.fork()
        if helper == 0:
            os.close(request_write)
            os.close(reply_read)
            status = 0
            try:
                if os.read(request_read, 1):
                    target = os.getppid()
                    _write_maps(target, "uid", uid_map, uid)
                    _write_maps(target, "gid", gid_map, gid)
                    os.write(reply_write, _DONE)
            except BaseException as err:  # noqa: BLE001 - sent to the parent; the helper must exit
                os.write(reply_write, str(err).encode(errors="replace")[:4000])
                status = 1
            finally:
                os._exit(status)
        os.close(request_read)
        os.close(reply_write)
        return cls(helper, request_write, reply_read)

    def finish(self) -> None:
        """Let the helper write the maps and wait for it.

        :raises NamespaceMapError: the helper could not write a map (its reason included).
        """
        try:
            os.write(self._request, b"1")
            reply = b""
            while chunk := os.read(self._reply, 4096):
                reply += chunk
        finally:
            self.abandon()
        if reply != _DONE:
            reason = reply.decode(errors="replace").strip() or "the helper process died"
            raise NamespaceMapError(f"cannot write the user namespace's id maps: {reason}")

    def abandon(self) -> None:
        """Close the pipes (a helper still waiting exits without writing) and reap it."""
        for fd in (self._request, self._reply):
            try:
                os.close(fd)
            except OSError:
                pass
        self._request = self._reply = -1
        if self._pid:
            os.waitpid(self._pid, 0)
            self._pid = 0


def _write_maps(pid: int, kind: str, ranges: list[NamespaceIdRange], own: int) -> None:
    """Write ``/proc/PID/{kind}_map`` directly when it is the trivial map an unprivileged
    process may write (its own id, count 1; for gids after denying setgroups), otherwise run
    ``new{kind}map``."""
    trivial = len(ranges) == 1 and ranges[0].outside == own and ranges[0].count == 1
    if trivial:
        if kind == "gid":
            with open(f"/proc/{pid}/setgroups", "w") as stream:
                stream.write("deny\n")
        with open(f"/proc/{pid}/{kind}_map", "w") as stream:
            stream.write(ranges[0].line() + "\n")
        return
    helper = f"new{kind}map"
    argv = [helper, str(pid)] + [part for r in ranges for part in r.line().split()]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise NamespaceMapError(f"--{kind}-map needs {helper} (Debian package uidmap): "
                                f"{err}") from err
    if done.returncode != 0:
        raise NamespaceMapError(f"{' '.join(argv)} failed ({done.returncode}): "
                                f"{done.stderr.strip()} (are the ranges in /etc/sub{kind}?)")
    log.info("sandbox: %s", " ".join(argv))
