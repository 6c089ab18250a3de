"""The `fleet:` section: inventory (inline or hosts_file), ssh, placement, batch, lost_after; every
problem at its file:line, and a valid section refused (for now) only after it was validated."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from shipyard.errors import SpecError
from shipyard.spec import Spec, SpecInvalid, json_schema, parse_spec
from shipyard.spec.fleet import FleetSpec, share_of

BASE = """\
service: shop
listen: 127.0.0.1:8080
run:
  command: [python, app.py]
"""
HOSTS = """\
fleet:
  hosts:
    - {name: web-1, address: 10.77.1.1, labels: {zone: a}}
    - {name: web-2, address: "fd00::2", labels: {zone: b}}
    - {name: web-3, address: web-3.example.test, labels: {zone: a}}
"""
SSH = "  ssh: {user: deploy, identity: ~/.ssh/id_ed25519}\n"


def problems(text: str, base_dir: Path = Path("/tmp")) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "shop.yaml", base_dir)
    return info.value.problems


def one(text: str, base_dir: Path = Path("/tmp")) -> str:
    found = problems(text, base_dir)
    assert len(found) == 1, found
    return found[0]


# -- loading ---------------------------------------------------------------------------------------

def test_the_example_fleet_loads_as_written() -> None:
    example = Path("/work/shared/shipyard.example.yaml").read_text()
    block = re.search(r"^# fleet:.*?(?=^\n)", example, re.S | re.M)
    assert block is not None
    fleet = "\n".join(line[2:] for line in block.group(0).splitlines())
    spec = parse_spec(BASE + fleet + "\n", "shop.yaml", Path("/tmp"))
    assert spec.fleet is not None and spec.fleet.hosts


def test_section_errors_are_reported_at_their_lines() -> None:
    found = problems(BASE + HOSTS.replace("web-3,", "web_3,") + SSH + "  lost_after: 1s\n")
    assert found == [
        'shop.yaml:9 fleet.hosts[2].name: "web_3" is not a host name: 1-63 of a-z, 0-9 and inner dashes '
        "(an RFC 1123 label, like web-1)",
        "shop.yaml:11 fleet.lost_after: 1s is too short: at least 5s, or a host would be lost (and its "
        "instances replaced) on one slow answer",
    ]


def test_json_data_with_a_fleet_round_trips() -> None:
    spec = parse_spec(BASE + HOSTS + SSH, "shop.yaml", Path("/tmp"))
    again = Spec.from_json_dict(spec.to_json_dict(), "/tmp")
    assert again.fleet == spec.fleet


def test_no_fleet_leaves_the_stored_spec_as_before() -> None:
    spec = parse_spec(BASE, "shop.yaml", Path("/tmp"))
    assert spec.fleet is None and "fleet" not in spec.to_json_dict()


# -- the section as a value --------------------------------------------------------

def test_defaults_and_round_trip() -> None:
    spec = parse_spec(BASE + HOSTS + SSH, "shop.yaml", Path("/tmp"))
    fleet = spec.fleet
    assert fleet is not None
    assert [h.name for h in fleet.hosts or []] == ["web-1", "web-2", "web-3"]
    assert (fleet.ssh.port, fleet.ssh.known_hosts, fleet.ssh.trust_new_hosts) == (22, "~/.ssh/known_hosts", False)
    assert (fleet.placement.per_host, fleet.batch.max_parallel, fleet.batch.min_healthy) == (1, "25%", "100%")
    assert fleet.lost_after == 30.0 and fleet.target(3) == 3
    doc = spec.to_json_dict()
    assert doc["fleet"]["lost_after"] == "30s"
    assert Spec.from_json_dict(doc, "/tmp", source="shop.yaml") == spec
    assert parse_spec(yaml.safe_dump(doc), "shop.yaml", Path("/tmp")) == spec


def test_hosts_file_is_read_relative_to_the_spec_and_kept_in_the_spec(tmp_path: Path) -> None:
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "hosts.yaml").write_text(
        "- {name: web-1, address: 10.77.1.1, labels: {zone: 1, rack: r7}}\n"
        "- name: web-2\n  address: 10.77.1.2\n  labels: {zone: 2, rack: r7}\n")
    text = BASE + "fleet:\n  hosts_file: inv/hosts.yaml\n" + SSH + "  placement: {total: 4, spread: zone}\n"
    spec = parse_spec(text, "shop.yaml", tmp_path)
    assert spec.fleet is not None and spec.fleet.hosts_file == "inv/hosts.yaml"
    assert [(h.name, h.address, h.labels) for h in spec.fleet.hosts or []] == [
        ("web-1", "10.77.1.1", {"zone": "1", "rack": "r7"}), ("web-2", "10.77.1.2", {"zone": "2", "rack": "r7"})]
    (tmp_path / "inv" / "hosts.yaml").write_text("[]\n")      # the stored spec no longer needs the file
    assert Spec.from_json_dict(spec.to_json_dict(), tmp_path, source="shop.yaml") == spec


def test_inline_label_numbers_keep_their_text() -> None:
    text = BASE + "fleet:\n  hosts: [{name: a, address: 10.0.0.1, labels: {zone: 1, ssd: true, v: 1.10}}]\n" + SSH
    fleet = parse_spec(text, "shop.yaml", Path("/tmp")).fleet
    assert fleet is not None and fleet.hosts is not None
    assert fleet.hosts[0].labels == {"zone": "1", "ssd": "true", "v": "1.10"}


def test_placement_total_with_cap_and_spread() -> None:
    text = BASE + HOSTS + SSH + "  placement: {total: 6, spread: zone, max_per_host: 2}\n" \
        "  batch: {max_parallel: 2, min_healthy: 5}\n"
    fleet = parse_spec(text, "shop.yaml", Path("/tmp")).fleet
    assert fleet is not None and fleet.target(3) == 6
    assert (fleet.batch.max_parallel, fleet.batch.min_healthy) == (2, 5)


# -- inventory problems -------------------------------------------------------------------------------

def test_hosts_file_problems_are_reported_at_the_inventory_line(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text(
        "- {name: web-1, address: 10.77.1.1}\n"
        "- name: web-2\n"
        "  address: 10.77.1.300\n"
        "  port: 22\n"
        "  name: web-3\n")
    text = BASE + "fleet:\n  hosts_file: hosts.yaml\n" + SSH + "  lost_after: 10\n"
    assert problems(text, tmp_path) == [
        'hosts.yaml:3 [1].address: "10.77.1.300" is not a valid IPv4 address',
        "hosts.yaml:4 [1].port: unknown key (expected one of: name, address, labels)",
        "hosts.yaml:5 [1].name: duplicate key (first given at line 2); remove one of them",
        "shop.yaml:8 fleet.lost_after: 10 is a bare number; durations need a unit (write 10s, not 10)",
    ]


@pytest.mark.parametrize(("content", "message"), [
    (None, "shop.yaml:6 fleet.hosts_file: {dir}/hosts.yaml does not exist (hosts_file is relative to the "
           "spec file's directory)"),
    ("{web-1: 10.0.0.1}\n", "hosts.yaml:1 the inventory must be a list of hosts like - {name: web-1, "
                            "address: 10.0.0.1}, got a mapping"),
    ("", "hosts.yaml: the inventory must be a list of hosts like - {name: web-1, address: 10.0.0.1}, "
         "got nothing"),
    ("- {name: a, address: [}\n", "hosts.yaml:1:23 not valid YAML: expected the node content, but found '}'"),
    ("a: &a [1]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, "
                             f"*{'a' if i == 0 else f'b{i - 1}'}]\n" for i in range(20)),
     "shop.yaml:6 fleet.hosts_file: hosts.yaml:1 expands to more than 5000 nodes once aliases are expanded; "
     "the limit is 5000"),
])
def test_an_unusable_hosts_file_is_one_problem(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "hosts.yaml").write_text(content)
    text = BASE + "fleet:\n  hosts_file: hosts.yaml\n" + SSH
    assert one(text, tmp_path) == message.replace("{dir}", str(tmp_path))


@pytest.mark.parametrize(("kind", "why"), [("fifo", "is not a regular file"),
                                           ("directory", "cannot be read (Is a directory)")])
def test_a_hosts_file_that_is_no_regular_file_is_refused_without_blocking(tmp_path: Path, kind: str,
                                                                          why: str) -> None:
    target = tmp_path / "hosts.yaml"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    text = BASE + "fleet:\n  hosts_file: hosts.yaml\n" + SSH
    assert one(text, tmp_path) == f"shop.yaml:6 fleet.hosts_file: {target} {why}"


def test_hosts_and_hosts_file_together(tmp_path: Path) -> None:
    text = BASE + HOSTS + "  hosts_file: hosts.yaml\n" + SSH
    assert one(text, tmp_path) == "shop.yaml:10 fleet: give exactly one of hosts or hosts_file, not both"


def test_neither_hosts_nor_hosts_file() -> None:
    assert one(BASE + "fleet:\n" + SSH) == "shop.yaml:5 fleet: give one of hosts or hosts_file"


# -- hosts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("second", "message"), [
    ("{name: a, address: 10.0.0.2}", '[1].name: "a" is the name of host [0] too; every host needs its own name'),
    ('{name: b, address: "FD00:0::1"}', '[1].address: "FD00:0::1" is the address of host [0] too; two entries '
                                        "would be one machine"),
])
def test_duplicates_are_reported_at_the_second_entry(second: str, message: str) -> None:
    text = BASE + f'fleet:\n  hosts:\n    - {{name: a, address: "fd00::1"}}\n    - {second}\n' + SSH
    assert one(text) == f"shop.yaml:8 fleet.hosts{message}"


def test_dns_names_are_compared_without_case_and_trailing_dot(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text("- {name: a, address: Web.Example}\n- {name: b, address: web.example.}\n")
    assert one(BASE + "fleet:\n  hosts_file: hosts.yaml\n" + SSH, tmp_path) == (
        'hosts.yaml:2 [1].address: "web.example." is the address of host [0] too; two entries would be one machine')


def test_an_empty_host_list() -> None:
    assert one(BASE + "fleet:\n  hosts: []\n" + SSH) == "shop.yaml:6 fleet.hosts: must not be empty"


@pytest.mark.parametrize(("host", "message"), [
    ("{name: A1, address: 10.0.0.1}", '.name: "A1" is not a host name: 1-63 of a-z, 0-9 and inner dashes '
                                      "(an RFC 1123 label, like web-1)"),
    ("{name: " + "a" * 64 + ", address: 10.0.0.1}", f'.name: "{"a" * 64}" is 64 characters long; a host name '
                                                     "is at most 63"),
    ('{name: a, address: "[fd00::1]"}', '.address: "[fd00::1]": write an IPv6 address without brackets '
                                        "(fd00::1); the port is ssh.port"),
    ("{name: a, address: 10.0.0.1:22}", '.address: "10.0.0.1:22" is not an address: give an IPv4 or IPv6 '
                                        "address or a DNS name, without user, port or path (those are "
                                        "ssh.user and ssh.port)"),
    ("{name: a, address: root@h}", '.address: "root@h" is not an address: give an IPv4 or IPv6 address or '
                                   "a DNS name, without user, port or path (those are ssh.user and ssh.port)"),
    ("{name: a, address: bad_name.example}", '.address: "bad_name.example" is not an IPv4/IPv6 address or a '
                                             "DNS name (labels of letters, digits and inner dashes, at most "
                                             "63 characters each)"),
    ("{name: a, address: 10.0.0.1, labels: {zone: a b}}", '.labels.zone: "a b" is not a valid label value: '
                                                          "1-63 of letters, digits, - _ . starting and "
                                                          "ending with a letter or digit"),
    ("{name: a, address: 10.0.0.1, labels: {zone: [a]}}", ".labels.zone: expected a string, got a list"),
    ("{name: a, address: 10.0.0.1, labels: {-z: a}}", '.labels.-z: "-z" is not a valid label name: 1-63 of '
                                                      "letters, digits, - _ . starting and ending with a "
                                                      "letter or digit"),
])
def test_one_host(host: str, message: str) -> None:
    assert one(BASE + f"fleet:\n  hosts:\n    - {host}\n" + SSH) == f"shop.yaml:7 fleet.hosts[0]{message}"


def test_addresses_that_are_fine() -> None:
    hosts = "[{name: a, address: 10.0.0.1}, {name: b, address: 'fd00::1'}, {name: c, address: host-c}, " \
            "{name: d, address: d.example.test.}]"
    spec = parse_spec(BASE + f"fleet:\n  hosts: {hosts}\n" + SSH, "shop.yaml", Path("/tmp"))
    assert spec.fleet is not None and len(spec.fleet.hosts or []) == 4


# -- ssh --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["password", "passphrase"])
def test_passwords_are_refused_with_keys_only(key: str) -> None:
    text = BASE + HOSTS + f"  ssh: {{user: deploy, identity: k, {key}: hunter2}}\n"
    assert one(text) == (f"shop.yaml:10 fleet.ssh: {key}: shipyard logs in with SSH keys only, never a password; "
                         f"remove {key} and give identity (a private key file whose public key is in the "
                         "user's authorized_keys on every host)")


@pytest.mark.parametrize(("ssh", "message"), [
    ("{user: deploy}", "fleet.ssh.identity: required key missing"),
    ("{user: deploy, identity: ~/.ssh/id_ed25519.pub}", 'fleet.ssh.identity: "~/.ssh/id_ed25519.pub" is a public '
                                                        "key: identity is the private key file "
                                                        "(~/.ssh/id_ed25519); its .pub goes into authorized_keys "
                                                        "on the hosts"),
    ("{user: deploy, identity: k, port: 0}", "fleet.ssh.port: must be at least 1, got 0"),
    ("{user: deploy, identity: k, port: '22'}", 'fleet.ssh.port: expected a whole number, got "22"'),
    ("{user: deploy, identity: k, trust_new_hosts: 'yes'}",
     'fleet.ssh.trust_new_hosts: expected true or false, got "yes"'),
    ("{user: deploy, identity: k, agent: true}", "fleet.ssh.agent: unknown key (expected one of: user, "
                                                 "identity, port, known_hosts, trust_new_hosts)"),
])
def test_ssh(ssh: str, message: str) -> None:
    assert one(BASE + HOSTS + f"  ssh: {ssh}\n") == f"shop.yaml:10 {message}"


def test_ssh_is_required() -> None:
    assert one(BASE + HOSTS) == "shop.yaml:5 fleet.ssh: required key missing"


# -- placement, batch, lost_after, replicas ---------------------------------------------------------------

@pytest.mark.parametrize(("placement", "message"), [
    ("{}", "fleet.placement: give one of per_host or total"),
    ("{per_host: 1, total: 2}", "fleet.placement: give exactly one of per_host or total, not per_host and total"),
    ("{per_host: 1, spread: zone}", "fleet.placement: spread goes with total, not with per_host (per_host "
                                    "already puts the same number on every host)"),
    ("{per_host: 65}", "fleet.placement.per_host: must be at most 64, got 65"),
    ("{total: 0}", "fleet.placement.total: must be at least 1, got 0"),
])
def test_placement_forms(placement: str, message: str) -> None:
    assert one(BASE + HOSTS + SSH + f"  placement: {placement}\n") == f"shop.yaml:11 {message}"


@pytest.mark.parametrize(("placement", "message"), [
    ("{total: 4, spread: rack}", 'spread: label "rack" is missing on host(s) web-1, web-2, web-3: '
                                 "give it to every host, or spread by another label"),
    ("{total: 7, max_per_host: 2}", "total: 7 does not fit: 3 host(s) take at most 2 each (6); lower "
                                    "total, raise max_per_host or add hosts"),
])
def test_placement_against_the_hosts(placement: str, message: str) -> None:
    assert one(BASE + HOSTS + SSH + f"  placement: {placement}\n") == f"shop.yaml:11 fleet.placement.{message}"


def test_spread_label_missing_on_one_host() -> None:
    text = BASE + HOSTS.replace(", labels: {zone: b}", "") + SSH + "placement:\n    spread: zone\n    total: 4\n"
    text = text.replace("placement:", "  placement:")
    assert one(text) == ('shop.yaml:12 fleet.placement.spread: label "zone" is missing on host(s) web-2: give it '
                         "to every host, or spread by another label")


@pytest.mark.parametrize(("batch", "message"), [
    ("{max_parallel: 0%}", 'fleet.batch.max_parallel: "0%" must be between 1% and 100%'),
    ("{max_parallel: 101%}", 'fleet.batch.max_parallel: "101%" must be between 1% and 100%'),
    ("{max_parallel: 2.5%}", 'fleet.batch.max_parallel: "2.5%" is not a percentage like "25%" or a whole '
                             "number of instances"),
    ("{max_parallel: '25'}", 'fleet.batch.max_parallel: "25" is not a percentage like "25%" or a whole number '
                             "of instances"),
    ("{max_parallel: 0}", "fleet.batch.max_parallel: must be at least 1 instance, got 0"),
    ("{max_parallel: true}", 'fleet.batch.max_parallel: expected a percentage like "25%" or a whole number of '
                             "instances, got true"),
    ("{min_healthy: 1.5}", 'fleet.batch.min_healthy: expected a percentage like "25%" or a whole number of '
                           "instances, got float"),
])
def test_batch_values(batch: str, message: str) -> None:
    assert one(BASE + HOSTS + SSH + f"  batch: {batch}\n") == f"shop.yaml:11 {message}"


def test_min_healthy_count_above_the_target() -> None:
    text = BASE + HOSTS + SSH + "  placement: {per_host: 2}\n  batch: {min_healthy: 7}\n"
    assert one(text) == ("shop.yaml:12 fleet.batch.min_healthy: 7 is more than the 6 instance(s) placement "
                         "asks for: lower it, or write a percentage")


def test_lost_after_needs_a_duration_of_at_least_5s() -> None:
    assert one(BASE + HOSTS + SSH + "  lost_after: 4s\n") == (
        "shop.yaml:11 fleet.lost_after: 4s is too short: at least 5s, or a host would be lost (and its "
        "instances replaced) on one slow answer")
    fleet = parse_spec(BASE + HOSTS + SSH + "  lost_after: 5s\n", "shop.yaml", Path("/tmp")).fleet
    assert fleet is not None and fleet.lost_after == 5.0


def test_replicas_with_a_fleet() -> None:
    assert one(BASE + "replicas: 3\n" + HOSTS + SSH) == (
        "shop.yaml: replicas counts instances on this machine; with a fleet, fleet.placement says how many "
        "run (per_host or total): remove replicas")


def test_a_fleet_in_python_needs_its_hosts() -> None:
    with pytest.raises(ValueError, match="a spec given as data must carry its hosts"):
        FleetSpec.model_validate({"hosts_file": "hosts.yaml", "ssh": {"user": "u", "identity": "k"}})


@pytest.mark.parametrize(("share", "target", "count"), [
    ("25%", 10, 3), ("25%", 4, 1), ("1%", 3, 1), ("100%", 7, 7), ("90%", 10, 9), ("90%", 11, 10),
    (3, 10, 3), (30, 10, 10), ("50%", 0, 0),
])
def test_share_of(share: int | str, target: int, count: int) -> None:
    assert share_of(share, target) == count


# -- schema -----------------------------------------------------------------------------------------

def test_json_schema_describes_the_fleet() -> None:
    schema = json_schema()
    assert "fleet" in schema["properties"]
    fleet = schema["$defs"]["FleetSpec"]
    assert "several hosts over SSH" in fleet["description"] and "replicas" in fleet["description"]
    assert "NOT AVAILABLE" not in fleet["description"]      # the engine runs it now (issue 15)
    assert set(fleet["properties"]) == {"hosts", "hosts_file", "ssh", "placement", "batch", "lost_after"}
    assert "password" not in schema["$defs"]["SshSpec"]["properties"]
    for name in ("FleetSpec", "HostSpec", "SshSpec", "PlacementSpec", "BatchSpec"):
        assert schema["$defs"][name]["additionalProperties"] is False, name


def test_the_example_fleet_satisfies_the_schema() -> None:
    from test_spec_roundtrip import _check  # the suite's small JSON Schema checker

    schema = json_schema()
    data = yaml.safe_load(BASE + HOSTS + SSH + "  placement: {total: 6, spread: zone, max_per_host: 2}\n"
                          "  batch: {max_parallel: 25%, min_healthy: 3}\n  lost_after: 1m\n")
    assert _check(schema, data, schema["$defs"]) == []
    data["fleet"]["ssh"]["password"] = "x"
    data["fleet"]["hosts"][0]["name"] = "Web_1"
    assert _check(schema["$defs"]["FleetSpec"], data["fleet"], schema["$defs"], ".fleet") == [
        ".fleet.hosts: no alternative matches " + repr(data["fleet"]["hosts"]), ".fleet.ssh.password: not allowed"]


def test_errors_are_spec_errors() -> None:
    assert issubclass(SpecInvalid, SpecError)
