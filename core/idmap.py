"""UID and GID translation between guest and host (``--translate-uid`` / ``--translate-gid``).

Sans-IO: parses the Rust daemon's six rule forms and answers "which host id is this guest id"
and "which guest id is this host id".  The two directions are independent tables, as in the
Rust daemon: ``guest:`` and ``squash-guest:`` fill the guest-to-host one, ``host:`` and
``squash-host:`` the host-to-guest one, ``map:`` both, ``forbid-guest:`` marks guest ids that
must not be used for new files or chown.  An id no rule covers maps to itself.  Within one
direction, source ranges must not overlap: which rule would win is otherwise a guess.

Rule syntax (each a separate option, ids and counts unsigned 32-bit, ranges ``[base, base+count)``)::

    guest:<guest base>:<host base>:<count>
    host:<host base>:<guest base>:<count>
    squash-guest:<guest base>:<host id>:<count>
    squash-host:<host base>:<guest id>:<count>
    forbid-guest:<guest base>:<count>
    map:<guest base>:<host base>:<count>
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Iterable

from virtiofsd.errors import ConfigError

ID_LIMIT = 1 << 32


class IdTranslationError(ConfigError):
    """A translation rule is malformed, out of range, or overlaps an earlier one."""


class ForbiddenIdError(PermissionError):
    """The guest used an id that a ``forbid-guest`` rule refuses."""


class _Action(enum.Enum):
    RANGE = "range"    # source base + k -> target base + k
    SQUASH = "squash"  # every source id -> one target id
    FORBID = "forbid"  # refused


@dataclasses.dataclass(frozen=True)
class _Rule:
    start: int
    end: int
    action: _Action
    target: int
    text: str

    def apply(self, source: int) -> int:
        if self.action is _Action.RANGE:
            return self.target + (source - self.start)
        if self.action is _Action.SQUASH:
            return self.target
        raise ForbiddenIdError(f"use of id {source} is forbidden by '{self.text}'")


class _Direction:
    """One direction's rules, sorted by start, non-overlapping; lookup by bisection."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._starts: list[int] = []
        self._rules: list[_Rule] = []

    def __bool__(self) -> bool:
        return bool(self._rules)

    def add(self, rule: _Rule) -> None:
        if rule.start == rule.end:
            return
        index = bisect.bisect_left(self._starts, rule.start)
        neighbours = self._rules[max(index - 1, 0):index + 1]
        for other in neighbours:
            if rule.start < other.end and other.start < rule.end:
                raise IdTranslationError(
                    f"{self._name} mapping '{rule.text}' overlaps the earlier '{other.text}'")
        self._starts.insert(index, rule.start)
        self._rules.insert(index, rule)

    def translate(self, source: int) -> int:
        index = bisect.bisect_right(self._starts, source) - 1
        if index >= 0:
            rule = self._rules[index]
            if source < rule.end:
                return rule.apply(source)
        return source


class IdTranslation:
    """The guest-to-host and host-to-guest tables of one id kind (uids or gids)."""

    def __init__(self, kind: str = "uid") -> None:
        self.kind = kind
        self._to_host = _Direction(f"guest-to-host {kind}")
        self._to_guest = _Direction(f"host-to-guest {kind}")

    @property
    def maps_guest_ids(self) -> bool:
        """Whether any guest id changes (or is refused) on its way to the host."""
        return bool(self._to_host)

    @property
    def maps_host_ids(self) -> bool:
        """Whether any host id is shown to the guest as another."""
        return bool(self._to_guest)

    def to_host(self, guest_id: int) -> int:
        """:raises ForbiddenIdError: a ``forbid-guest`` rule covers ``guest_id``."""
        return self._to_host.translate(guest_id)

    def to_guest(self, host_id: int) -> int:
        return self._to_guest.translate(host_id)

    def add(self, text: str) -> None:
        """Parse one rule and add it; :raises IdTranslationError: naming the rule."""
        form, _, rest = text.partition(":")
        fields = rest.split(":") if rest else []
        arity = 2 if form == "forbid-guest" else 3
        if form not in _FORMS:
            raise IdTranslationError(
                f"--translate-{self.kind} '{text}': unknown form '{form}' "
                f"(one of {', '.join(_FORMS)})")
        if len(fields) != arity:
            raise IdTranslationError(
                f"--translate-{self.kind} '{text}': {form} takes {arity} numbers separated by ':'")
        try:
            numbers = [int(field, 10) for field in fields]
        except ValueError:
            raise IdTranslationError(
                f"--translate-{self.kind} '{text}': {fields} are not all decimal numbers") from None
        if any(not 0 <= number < ID_LIMIT for number in numbers):
            raise IdTranslationError(
                f"--translate-{self.kind} '{text}': ids and counts are 32-bit unsigned numbers")
        _FORMS[form](self, text, *numbers)

    def _range(self, text: str, base: int, count: int) -> tuple[int, int]:
        if base + count > ID_LIMIT:
            raise IdTranslationError(f"--translate-{self.kind} '{text}': the range overflows 32 bits")
        return base, base + count

    def _guest(self, text: str, guest: int, host: int, count: int) -> None:
        start, end = self._range(text, guest, count)
        self._range(text, host, count)
        self._to_host.add(_Rule(start, end, _Action.RANGE, host, text))

    def _host(self, text: str, host: int, guest: int, count: int) -> None:
        start, end = self._range(text, host, count)
        self._range(text, guest, count)
        self._to_guest.add(_Rule(start, end, _Action.RANGE, guest, text))

    def _squash_guest(self, text: str, guest: int, host: int, count: int) -> None:
        start, end = self._range(text, guest, count)
        self._to_host.add(_Rule(start, end, _Action.SQUASH, host, text))

    def _squash_host(self, text: str, host: int, guest: int, count: int) -> None:
        start, end = self._range(text, host, count)
        self._to_guest.add(_Rule(start, end, _Action.SQUASH, guest, text))

    def _forbid_guest(self, text: str, guest: int, count: int) -> None:
        start, end = self._range(text, guest, count)
        self._to_host.add(_Rule(start, end, _Action.FORBID, 0, text))

    def _map(self, text: str, guest: int, host: int, count: int) -> None:
        self._guest(text, guest, host, count)
        self._host(text, host, guest, count)


_FORMS = {
    "guest": IdTranslation._guest,
    "host": IdTranslation._host,
    "squash-guest": IdTranslation._squash_guest,
    "squash-host": IdTranslation._squash_host,
    "forbid-guest": IdTranslation._forbid_guest,
    "map": IdTranslation._map,
}


def parse_translation(rules: Iterable[str], kind: str = "uid") -> IdTranslation:
    """The translation of ``rules`` (the option's values, in order) for ``kind`` uid or gid."""
    translation = IdTranslation(kind)
    for text in rules:
        translation.add(text)
    return translation
