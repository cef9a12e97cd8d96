"""The --xattrmap rule language: every example of the C daemon's manual and of the Rust
daemon's README is a test vector, plus the malformed rule sets that must be refused at start."""

from __future__ import annotations

import errno

import pytest

from virtiofsd_plugins.xattrmap.rules import (
    DENIED, UNSUPPORTED, Rule, RuleType, Scope, XattrMap, XattrMapError, parse_rules,
)

CATCH_ALL = " :ok:all:::"


def shape(rules: tuple[Rule, ...]) -> list[tuple]:
    """The rules without their source numbers, to compare two spellings of one rule set."""
    return [(r.type, r.scope, r.key, r.prepend) for r in rules]


# --- The single-rule examples of the manual (completed with a catch-all) ---------------------


def test_prefix_client_prefixes_guest_names_only():
    rules = XattrMap.parse(":prefix:client:trusted.:user.virtiofs.:" + CATCH_ALL)
    assert rules.to_host(b"trusted.x") == b"user.virtiofs.trusted.x"
    assert rules.to_host(b"user.y") == b"user.y"
    assert rules.to_guest(b"user.virtiofs.trusted.x") == b"user.virtiofs.trusted.x"


def test_prefix_server_strips_host_names_only():
    rules = XattrMap.parse(":prefix:server::user.virtiofs.:" + CATCH_ALL)
    assert rules.to_guest(b"user.virtiofs.trusted.x") == b"trusted.x"
    assert rules.to_host(b"trusted.x") == b"trusted.x"


def test_prefix_all_combines_both():
    rules = XattrMap.parse(":prefix:all:trusted.:user.virtiofs.:" + CATCH_ALL)
    assert rules.to_host(b"trusted.x") == b"user.virtiofs.trusted.x"
    assert rules.to_guest(b"user.virtiofs.trusted.x") == b"trusted.x"


def test_ok_client_stops_the_search_for_user_names():
    rules = XattrMap.parse(":ok:client:user.:: :bad:all:::")
    assert rules.to_host(b"user.a") == b"user.a"
    assert rules.to_host(b"trusted.a") == DENIED


def test_ok_server_passes_security_names_in_lists():
    rules = XattrMap.parse(":ok:server::security.: :bad:all:::")
    assert rules.to_guest(b"security.selinux") == b"security.selinux"
    assert rules.to_guest(b"user.a") is None


def test_ok_all_terminates_in_both_directions():
    rules = XattrMap.parse(":ok:all:::")
    assert rules.to_host(b"anything.at.all") == b"anything.at.all"
    assert rules.to_guest(b"anything.at.all") == b"anything.at.all"


def test_bad_server_hides_security_names():
    rules = XattrMap.parse(":bad:server::security.:" + CATCH_ALL)
    assert rules.to_guest(b"security.selinux") is None
    assert rules.to_guest(b"user.a") == b"user.a"
    assert rules.to_host(b"security.selinux") == b"security.selinux"


def test_unsupported_refuses_with_enotsup_and_hides():
    rules = XattrMap.parse(":unsupported:all:trusted.:trusted.:" + CATCH_ALL)
    assert rules.to_host(b"trusted.a") == UNSUPPORTED
    assert UNSUPPORTED.errno == errno.ENOTSUP and DENIED.errno == errno.EPERM
    assert rules.to_guest(b"trusted.a") is None


# --- The numbered examples ----------------------------------------------------------------------


def test_example_1_prefix_everything():
    long_form = XattrMap.parse(":prefix:all::user.virtiofs.::bad:all:::")
    short_form = XattrMap.parse(":map::user.virtiofs.:")
    assert shape(long_form.rules) == shape(short_form.rules)
    for rules in (long_form, short_form):
        assert rules.to_host(b"trusted.x") == b"user.virtiofs.trusted.x"
        assert rules.to_host(b"user.y") == b"user.virtiofs.user.y"
        assert rules.to_guest(b"user.virtiofs.security.z") == b"security.z"
        assert rules.to_guest(b"security.selinux") is None  # set by the host: hidden


EXAMPLE_2 = """/prefix/all/trusted./user.virtiofs./
/bad/server//trusted./
/bad/client/user.virtiofs.//
/ok/all///"""


def test_example_2_rules_across_newlines_with_slash_separators():
    rules = XattrMap.parse(EXAMPLE_2)
    assert shape(rules.rules) == [
        (RuleType.PREFIX, Scope.ALL, b"trusted.", b"user.virtiofs."),
        (RuleType.BAD, Scope.SERVER, b"", b"trusted."),
        (RuleType.BAD, Scope.CLIENT, b"user.virtiofs.", b""),
        (RuleType.OK, Scope.ALL, b"", b""),
    ]
    assert rules.to_host(b"trusted.a") == b"user.virtiofs.trusted.a"
    assert rules.to_guest(b"user.virtiofs.trusted.a") == b"trusted.a"
    assert rules.to_guest(b"trusted.host") is None
    assert rules.to_host(b"user.virtiofs.a") == DENIED
    assert rules.to_host(b"user.a") == b"user.a" and rules.to_guest(b"user.a") == b"user.a"


def test_example_2_equals_its_map_form():
    map_form = XattrMap.parse("/map/trusted./user.virtiofs./")
    assert shape(map_form.rules) == shape(XattrMap.parse(EXAMPLE_2).rules)


def test_example_3_hide_security_allow_everything_else():
    rules = XattrMap.parse("/bad/all/security./security./\n/ok/all///")
    assert rules.to_host(b"security.selinux") == DENIED
    assert rules.to_guest(b"security.selinux") is None
    assert rules.to_host(b"user.a") == b"user.a"


def test_rust_readme_map_form():
    rules = XattrMap.parse(":map::user.virtiofs.:")
    assert rules.to_host(b"security.capability") == b"user.virtiofs.security.capability"


def test_selinux_recipe_remaps_only_the_label():
    rules = XattrMap.parse(":map:security.selinux:trusted.virtiofs.:")
    assert rules.to_host(b"security.selinux") == b"trusted.virtiofs.security.selinux"
    assert rules.to_guest(b"trusted.virtiofs.security.selinux") == b"security.selinux"
    assert rules.to_guest(b"security.selinux") is None  # the host's own label stays hidden
    assert rules.to_host(b"trusted.virtiofs.x") == DENIED
    assert rules.to_host(b"user.a") == b"user.a"
    assert rules.to_host(b"security.capability") == b"security.capability"


# --- Syntax ------------------------------------------------------------------------------------


def test_each_rule_chooses_its_separator_and_blanks_surround_rules():
    rules = parse_rules("  :prefix:all:trusted.:user.virtiofs.: \t/prefix/all/trusted./"
                        "user.virtiofs./\n |ok|all||| \n")
    assert shape(rules)[0] == shape(rules)[1]
    assert [rule.number for rule in rules] == [1, 2, 3]


def test_first_match_wins():
    rules = XattrMap.parse(":bad:client:user.secret.:: :ok:client:user.:: :bad:all:::")
    assert rules.to_host(b"user.secret.k") == DENIED
    assert rules.to_host(b"user.k") == b"user.k"


def test_a_fully_prefixed_empty_host_name_is_hidden():
    assert XattrMap.parse(":map::user.virtiofs.:").to_guest(b"user.virtiofs.") == b""


@pytest.mark.parametrize("text, rule, words", [
    ("", None, "no rule given"),
    ("   \n ", None, "no rule given"),
    (":prefix:client:hi", 1, "incomplete"),
    (":ok:all:::  :prefix:all:trusted.:user.vm.", 2, "incomplete"),
    (":TOMATOPIRATE:all:trusted.:virtiofs.user.:", 1, "unknown type 'TOMATOPIRATE'"),
    ("/prefix/helloworld///", 1, "unknown scope 'helloworld'"),
    (":map:trusted.:virtiofs.user.::map:trusted.:virtiofs.user.:", 1, "must be the last"),
    (":map::user.virtiofs.: :ok:all:::", 1, "must be the last"),
    (":prefix:client:trusted.:user.virtiofs.:", 1, "catch-all"),
    (":ok:client:::", 1, "host (server)"),
    (":ok:server::: :bad:client:user.::", 2, "guest (client)"),
])
def test_malformed_rule_sets_are_refused_naming_the_rule(text, rule, words):
    with pytest.raises(XattrMapError) as caught:
        parse_rules(text)
    assert caught.value.rule == rule
    assert words in str(caught.value)
    if rule is not None:
        assert f"rule {rule} (" in str(caught.value)
