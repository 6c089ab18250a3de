"""The spec's fleet.ssh section becomes the SSH layer's options: paths as the spec file means
them, every key carried over, transport tuning left to defaults unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.runtime.ssh.options import SshOptions, SshTarget, options_from_spec, targets_from_spec
from shipyard.spec.fleet import FleetSpec, SshSpec


def test_every_key_of_the_section_is_carried_over_relative_paths_from_the_spec_dir() -> None:
    ssh = SshSpec.model_validate({"user": "deploy", "identity": "keys/deploy", "port": 2222,
                                  "known_hosts": "fleet_known_hosts", "trust_new_hosts": True})
    o = options_from_spec(ssh, Path("/srv/app"))
    assert (o.user, o.identity, o.known_hosts, o.port, o.trust_new_hosts) == (
        "deploy", Path("/srv/app/keys/deploy"), Path("/srv/app/fleet_known_hosts"), 2222, True)
    assert o.connect_timeout == SshOptions(user="x", known_hosts=Path("k")).connect_timeout


def test_home_and_absolute_paths_stay_and_tuning_can_be_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ops")
    ssh = SshSpec.model_validate({"user": "deploy", "identity": "~/.ssh/shipyard", "known_hosts": "/etc/kh"})
    o = options_from_spec(ssh, Path("/srv/app"), connect_timeout=3.0)
    assert (o.identity, o.known_hosts, o.port, o.trust_new_hosts, o.connect_timeout) == (
        Path("/home/ops/.ssh/shipyard"), Path("/etc/kh"), 22, False, 3.0)


def test_default_known_hosts_is_the_daemon_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ops")
    o = options_from_spec(SshSpec.model_validate({"user": "u", "identity": "k"}), Path("/srv"))
    assert o.known_hosts == Path("/home/ops/.ssh/known_hosts")


def test_the_inventory_becomes_targets_on_the_sections_port() -> None:
    fleet = FleetSpec.model_validate({"hosts": [{"name": "web-1", "address": "10.0.0.1"},
                                                {"name": "web-2", "address": "10.0.0.2", "labels": {"zone": "b"}}],
                                      "ssh": {"user": "u", "identity": "k"}})
    assert targets_from_spec(fleet) == [SshTarget("web-1", "10.0.0.1"), SshTarget("web-2", "10.0.0.2")]
