"""The translation tables of --translate-uid/--translate-gid (virtiofsd.idmap), without I/O."""

from __future__ import annotations

import pytest
from virtiofsd.idmap import ForbiddenIdError, IdTranslationError, parse_translation


def test_no_rules_is_the_identity() -> None:
    table = parse_translation([])
    assert (table.to_host(1234), table.to_guest(1234)) == (1234, 1234)
    assert not table.maps_guest_ids and not table.maps_host_ids


def test_guest_form_maps_a_range_one_way() -> None:
    table = parse_translation(["guest:1000:5000:10"])
    assert [table.to_host(i) for i in (999, 1000, 1009, 1010)] == [999, 5000, 5009, 1010]
    assert table.to_guest(5000) == 5000
    assert table.maps_guest_ids and not table.maps_host_ids


def test_host_form_maps_a_range_the_other_way() -> None:
    table = parse_translation(["host:5000:1000:10"])
    assert [table.to_guest(i) for i in (4999, 5000, 5009, 5010)] == [4999, 1000, 1009, 5010]
    assert table.to_host(1000) == 1000


def test_squash_forms_map_a_range_onto_one_id() -> None:
    table = parse_translation(["squash-guest:0:1001:4294967295", "squash-host:0:65534:1000"])
    assert table.to_host(0) == table.to_host(4294967294) == 1001
    assert table.to_host(4294967295) == 4294967295
    assert table.to_guest(999) == 65534 and table.to_guest(1000) == 1000


def test_map_form_is_both_directions() -> None:
    table = parse_translation(["map:0:100000:65536"])
    assert table.to_host(0) == 100000 and table.to_host(65535) == 165535
    assert table.to_guest(100000) == 0 and table.to_guest(99999) == 99999


def test_forbid_guest_raises_for_the_range_only() -> None:
    table = parse_translation(["forbid-guest:5000:2"], "gid")
    assert table.to_host(4999) == 4999 and table.to_host(5002) == 5002
    with pytest.raises(ForbiddenIdError, match="5001.*forbid-guest:5000:2"):
        table.to_host(5001)
    assert table.to_guest(5000) == 5000


def test_the_readme_example_for_an_unprivileged_daemon() -> None:
    table = parse_translation(["squash-guest:0:1001:4294967295", "host:1001:1000:1"])
    assert table.to_host(0) == table.to_host(1000) == 1001
    assert table.to_guest(1001) == 1000 and table.to_guest(0) == 0


def test_many_rules_find_the_right_range() -> None:
    rules = [f"guest:{base}:{base + 100000}:10" for base in range(0, 1000, 20)]
    table = parse_translation(reversed(rules))
    assert table.to_host(40) == 100040 and table.to_host(49) == 100049
    assert table.to_host(50) == 50 and table.to_host(980) == 100980


def test_empty_ranges_are_accepted_and_map_nothing() -> None:
    table = parse_translation(["guest:10:20:0", "guest:10:30:5"])
    assert table.to_host(10) == 30


@pytest.mark.parametrize("rules, message", [
    (["guest:0:100:10", "map:5:200:10"], "overlaps the earlier 'guest:0:100:10'"),
    (["host:100:0:10", "squash-host:109:0:1"], "overlaps"),
    (["map:0:100:10", "host:105:0:1"], "host-to-guest uid mapping 'host:105:0:1' overlaps"),
    (["forbid-guest:0:10", "squash-guest:9:0:1"], "overlaps"),
    (["guest:4294967295:0:2"], "overflows"),
    (["guest:0:4294967295:2"], "overflows"),
    (["guest:0:100"], "takes 3 numbers"),
    (["forbid-guest:0:1:2"], "takes 2 numbers"),
    (["sideways:0:100:1"], "unknown form 'sideways'"),
    (["guest:0:x:1"], "decimal"),
    (["guest:-1:0:1"], "decimal|32-bit"),
    (["guest:0:4294967296:1"], "32-bit"),
    (["guest"], "takes 3 numbers"),
])
def test_bad_rules_are_refused_naming_the_rule(rules: list[str], message: str) -> None:
    with pytest.raises(IdTranslationError, match=message):
        parse_translation(rules)
