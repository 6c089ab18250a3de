"""`domains:`: exact names and leading wildcards, lowercased, each checked where it is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.spec import SpecInvalid, parse_spec
from shipyard.spec.domains import overlapping

BASE = """\
service: shop
listen: 127.0.0.1:8080
run:
  command: [python, app.py]
"""


def problems(domains: str) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(BASE + f"domains: {domains}\n", "shop.yaml", Path("/tmp"))
    return info.value.problems


def test_names_and_wildcards_are_kept_lowercased_in_order() -> None:
    spec = parse_spec(BASE + 'domains: [Shop.Example.TEST, "*.shop.example.test", 10.0.0.1]\n', "shop.yaml",
                      Path("/tmp"))
    assert spec.domains == ["shop.example.test", "*.shop.example.test", "10.0.0.1"]
    assert spec.to_json_dict()["domains"] == spec.domains


def test_absent_means_every_host() -> None:
    assert parse_spec(BASE, "shop.yaml", Path("/tmp")).domains is None


@pytest.mark.parametrize(("value", "message"), [
    ('["shop.example.test:443"]', 'domains[0]: "shop.example.test:443" is not a host name: a domain carries no '
                                  "port, scheme or path (the port is `listen`'s); write it like shop.example.test"),
    ('["https://shop.test"]', 'domains[0]: "https://shop.test" is not a host name'),
    ('["a..b"]', 'domains[0]: "a..b" is not a valid host name: an empty label (two dots in a row?)'),
    ('["*"]', 'domains[0]: "*": a wildcard is only a leading "*." before a name, like "*.shop.example.test"'),
    ('["shop.*.test"]', 'domains[0]: "shop.*.test": a wildcard is only a leading "*."'),
    ('["**.shop.test"]', 'domains[0]: "**.shop.test": a wildcard is only a leading "*."'),
    ('["-shop.test"]', 'domains[0]: "-shop.test" is not a valid host name: label "-shop" may hold only a-z, 0-9 '
                       "and inner dashes (RFC 1123)"),
    ('["shop_1.test"]', 'label "shop_1" may hold only a-z, 0-9 and inner dashes (RFC 1123)'),
    (f'["{"a" * 64}.test"]', f'label "{"a" * 64}" is longer than 63 characters'),
    (f'["{".".join(["abcdefghi"] * 26)}"]', "characters long; a host name is at most 253"),
    ('["shop.test."]', 'domains[0]: "shop.test." ends with a dot: write it without the trailing dot'),
    ('[shop.test, SHOP.test]', 'domains: "shop.test" is listed twice (names are compared lowercased)'),
    ("[]", "domains: must not be empty"),
    ("shop.test", 'domains: expected a list, got "shop.test"'),
    ("[8080]", 'domains[0]: expected a string, got 8080 (quote it: "8080")'),
])
def test_bad_names_are_refused_where_they_are_written(value: str, message: str) -> None:
    found = problems(value)
    assert len(found) == 1, found
    assert found[0].startswith("shop.yaml:5 ") and message in found[0], found


def test_overlap_is_the_same_exact_name_or_the_same_wildcard() -> None:
    assert overlapping(["a.test", "*.b.test"], ["*.a.test", "b.test"]) == []
    assert overlapping(["a.test", "*.b.test"], ["x.test", "*.b.test", "a.test"]) == ["a.test", "*.b.test"]


def test_an_unset_key_is_not_stored() -> None:
    """A spec stored before `domains` existed and one without it are the same document (no plan change)."""
    spec = parse_spec(BASE, "shop.yaml", Path("/tmp"))
    assert "domains" not in spec.to_json_dict()
    assert type(spec).from_json_dict(spec.to_json_dict(), "/tmp").to_json_dict() == spec.to_json_dict()


def test_both_routers_route_by_host() -> None:
    for kind in ("embedded", "haproxy"):
        spec = parse_spec(BASE + f"domains: [shop.test]\nrouter: {{kind: {kind}}}\n", "shop.yaml", Path("/tmp"))
        assert (spec.domains, spec.router.kind) == (["shop.test"], kind)
