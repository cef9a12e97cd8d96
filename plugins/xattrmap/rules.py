"""The ``--xattrmap`` rule language: parser and matcher, without any I/O.

Grammar (the C virtiofsd's manual and the Rust virtiofsd's ``doc/xattr-mapping.md``)::

    rules   := blank* rule (blank* rule)* blank*
    rule    := SEP type SEP scope SEP key SEP prepend SEP
             | SEP "map" SEP key SEP prepend SEP          (only as the last rule)
    type    := "prefix" | "ok" | "bad" | "unsupported"
    scope   := "client" | "server" | "all"

``SEP`` is the first non-blank character of each rule, so every rule may choose its own; rules
may be separated by blanks and newlines.  ``key`` is matched as a prefix of names the guest
(client) sends, ``prepend`` as a prefix of names the host (server) lists.  The first rule whose
scope and prefix match decides:

- ``prefix``: a guest name gets ``prepend`` put in front; a host name loses ``prepend``;
- ``ok``: the name passes unchanged;
- ``bad``: a guest name is refused (EPERM; ENODATA for a get), a host name is hidden;
- ``unsupported``: as ``bad`` but the guest receives ENOTSUP.

``:map:KEY:PREPEND:`` is shorthand for the rules the manual gives as equivalent: with an empty
``KEY`` ``:prefix:all::PREPEND:`` then ``:bad:all:::``; otherwise ``:prefix:all:KEY:PREPEND:``,
``:bad:server::KEY:``, ``:bad:client:PREPEND::`` and ``:ok:all:::``.

Unlike the Rust daemon, which fails a request that no rule matches, a rule set that does not
match every name in both directions is refused when parsed (:class:`XattrMapError` names the
rule to fix), so a running daemon always has an answer.
"""

from __future__ import annotations

import dataclasses
import enum
import errno

_BLANKS = b" \t\n\r\f\v"


class XattrMapError(ValueError):
    """A rule set that cannot be used; ``rule`` is the 1-based number of the rule at fault."""

    def __init__(self, message: str, rule: int | None = None, text: bytes | None = None) -> None:
        where = ""
        if rule is not None:
            where = f"rule {rule}"
            if text:
                where += f" ({text.decode(errors='replace')})"
            where += ": "
        super().__init__(f"--xattrmap: {where}{message}")
        self.rule = rule


class RuleType(enum.Enum):
    PREFIX = "prefix"
    OK = "ok"
    BAD = "bad"
    UNSUPPORTED = "unsupported"


class Scope(enum.Flag):
    CLIENT = enum.auto()
    SERVER = enum.auto()
    ALL = CLIENT | SERVER


_SCOPES = {b"client": Scope.CLIENT, b"server": Scope.SERVER, b"all": Scope.ALL}
_TYPES = {t.value.encode(): t for t in RuleType}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule; ``number`` is its position in the text the user wrote (1-based), shared by
    the rules a ``map`` expands into."""

    type: RuleType
    scope: Scope
    key: bytes
    prepend: bytes
    number: int = 0


@dataclasses.dataclass(frozen=True)
class Refused:
    """What a guest name that a ``bad`` or ``unsupported`` rule matched gets: ``errno``."""

    errno: int


#: A guest name refused by ``bad`` (GETXATTR turns it into ENODATA) or ``unsupported``.
DENIED = Refused(errno.EPERM)
UNSUPPORTED = Refused(errno.ENOTSUP)


def _split_rule(text: bytes, start: int, number: int) -> tuple[list[bytes], int]:
    """The fields of the rule starting at ``text[start]`` (its separator) and the index after
    it.  Fields run up to the next separator; the type decides how many there are."""
    separator = text[start:start + 1]
    fields: list[bytes] = []
    position = start + 1
    wanted = 4
    while len(fields) < wanted:
        end = text.find(separator, position)
        if end < 0:
            shown = text[start:].split(b"\n", 1)[0]
            raise XattrMapError(f"incomplete: {wanted - len(fields)} more field(s) ending with "
                                f"{separator.decode(errors='replace')!r} expected", number, shown)
        fields.append(text[position:end])
        position = end + 1
        if len(fields) == 1 and fields[0] == b"map":
            wanted = 3
    return fields, position


def _expand_map(key: bytes, prepend: bytes, number: int) -> list[Rule]:
    if not key:
        return [Rule(RuleType.PREFIX, Scope.ALL, b"", prepend, number),
                Rule(RuleType.BAD, Scope.ALL, b"", b"", number)]
    return [Rule(RuleType.PREFIX, Scope.ALL, key, prepend, number),
            Rule(RuleType.BAD, Scope.SERVER, b"", key, number),
            Rule(RuleType.BAD, Scope.CLIENT, prepend, b"", number),
            Rule(RuleType.OK, Scope.ALL, b"", b"", number)]


def parse_rules(text: str | bytes) -> tuple[Rule, ...]:
    """Parse a rule set.

    :raises XattrMapError: the text holds no rule, a rule is incomplete or has an unknown type
        or scope, ``map`` is not the last rule, or no rule catches every remaining name of the
        guest or of the host.
    """
    data = text.encode() if isinstance(text, str) else bytes(text)
    rules: list[Rule] = []
    texts: list[bytes] = []
    position = 0
    number = 0
    saw_map = False
    while True:
        while position < len(data) and data[position] in _BLANKS:
            position += 1
        if position >= len(data):
            break
        number += 1
        if saw_map:
            raise XattrMapError("'map' must be the last rule", number - 1, texts[-1])
        start = position
        fields, position = _split_rule(data, start, number)
        shown = data[start:position]
        texts.append(shown)
        kind = fields[0]
        if kind == b"map":
            saw_map = True
            rules.extend(_expand_map(fields[1], fields[2], number))
            continue
        if kind not in _TYPES:
            raise XattrMapError(f"unknown type {kind.decode(errors='replace')!r} (expected "
                                "prefix, ok, bad, unsupported or map)", number, shown)
        if fields[1] not in _SCOPES:
            raise XattrMapError(f"unknown scope {fields[1].decode(errors='replace')!r} "
                                "(expected client, server or all)", number, shown)
        rules.append(Rule(_TYPES[kind], _SCOPES[fields[1]], fields[2], fields[3], number))
    if not rules:
        raise XattrMapError("no rule given")
    _check_terminated(rules, texts)
    return tuple(rules)


def _check_terminated(rules: list[Rule], texts: list[bytes]) -> None:
    """Some rule must match every guest name (client scope, empty key) and every host name
    (server scope, empty prepend); otherwise point at the last rule, where one belongs."""
    missing = []
    if not any(rule.scope & Scope.CLIENT and not rule.key for rule in rules):
        missing.append("guest (client)")
    if not any(rule.scope & Scope.SERVER and not rule.prepend for rule in rules):
        missing.append("host (server)")
    if missing:
        raise XattrMapError(
            f"the rule set does not end with a catch-all: {' and '.join(missing)} names that no "
            "rule matches would have no answer; add a final rule such as ':ok:all:::' or "
            "':bad:all:::'", len(texts), texts[-1])


class XattrMap:
    """A parsed rule set and its two directions of matching."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, text: str | bytes) -> XattrMap:
        return cls(parse_rules(text))

    def _first(self, scope: Scope, name: bytes) -> Rule:
        for rule in self.rules:
            if rule.scope & scope and name.startswith(rule.key if scope is Scope.CLIENT
                                                      else rule.prepend):
                return rule
        raise AssertionError("a parsed rule set always has a catch-all")

    def to_host(self, name: bytes) -> bytes | Refused:
        """The host name for a guest (client) name, or how it is refused."""
        rule = self._first(Scope.CLIENT, name)
        if rule.type is RuleType.PREFIX:
            return rule.prepend + name
        if rule.type is RuleType.OK:
            return name
        return DENIED if rule.type is RuleType.BAD else UNSUPPORTED

    def to_guest(self, name: bytes) -> bytes | None:
        """The guest name for a host (server) name, or ``None`` when it is hidden."""
        rule = self._first(Scope.SERVER, name)
        if rule.type is RuleType.PREFIX:
            return name[len(rule.prepend):]
        if rule.type is RuleType.OK:
            return name
        return None
