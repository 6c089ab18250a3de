"""`shipyard hosts` and `shipyard hosts check` end to end on the fakes (CLI -> API -> engine ->
FakeHostReports, no socket): the table, --json, exit codes, and host-supplied text printed
as text (a hostile error message from a host is shown, never obeyed as markup)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shipyard.cli import hosts as hosts_cli
from shipyard.cli.app import app
from support.hosts_api import HostsWorld

WEB = (("web-1", "10.9.0.1"), ("web-2", "10.9.0.2"))
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture
def hw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostsWorld:
    w = HostsWorld(tmp_path)
    w.add_service("shop", 18080, WEB)
    w.add_instance("shop", "shop-blue-1", "10.9.0.1", 101)
    w.add_instance("shop", "shop-blue-2", "10.9.0.1", 102)
    monkeypatch.setattr(hosts_cli, "client", lambda state_dir, timeout=600.0: w.api())
    return w


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split("[\u2503\u2502]", line) if c.strip()]


def row(output: str, first: str) -> list[str]:
    return next(cells(line) for line in output.splitlines() if cells(line)[:1] == [first])


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


def test_hosts_table_shows_state_version_disk_load_instances(hw: HostsWorld) -> None:
    hw.reports.down["web-2"] = "no SSH connection to web-2 (10.9.0.2:22) within 10s: [red]refused[/red]"
    code, output = run("hosts")
    assert code == 0, output
    assert row(output, "NAME") == ["NAME", "ADDRESS", "STATE", "VERSION", "DISK", "LOAD", "INSTANCES"]
    assert row(output, "web-1") == ["web-1", "10.9.0.1", "up", "0.0-fake", "4.0 GiB free of 10.0 GiB",
                                    "0.25 (2 cpu)", "2 (shop 2)"]
    assert row(output, "web-2") == ["web-2", "10.9.0.2", "unreachable", "-", "-", "-", "0"]
    # the host's reason, markup and all, as text
    assert "web-2: no SSH connection to web-2 (10.9.0.2:22) within 10s: [red]refused[/red]" in output
    assert "hint: start its sshd" in output


def test_hosts_json_is_the_api_document(hw: HostsWorld) -> None:
    code, output = run("hosts", "--json")
    assert code == 0, output
    doc = json.loads(output)
    assert doc["services"] == ["shop"] and [h["name"] for h in doc["hosts"]] == ["web-1", "web-2"]
    assert [i["id"] for i in doc["hosts"][0]["instances"]] == ["shop-blue-1", "shop-blue-2"]


def test_no_fleet_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = HostsWorld(tmp_path)
    monkeypatch.setattr(hosts_cli, "client", lambda state_dir, timeout=600.0: w.api())
    code, output = run("hosts")
    assert code == 0 and "no fleet hosts" in output


def test_check_all_ok_exits_0(hw: HostsWorld) -> None:
    code, output = run("hosts", "check", "shop")
    assert code == 0, output
    assert "every host can run it" in output
    assert [line.split()[:2] for line in output.splitlines()[1:]] == [["OK", "web-1"], ["OK", "web-2"]]


def test_check_a_failing_host_exits_1_with_its_reason(hw: HostsWorld) -> None:
    hw.reports.failing["web-2"] = ("python", "web-2 has no python3 (the shipyard helper runs under it) [bold]x")
    code, output = run("hosts", "check", "shop", "-v")
    assert code == 1, output
    assert "1 host(s) cannot run it" in output
    fail = next(line for line in output.splitlines() if "FAIL" in line)
    assert fail.split()[:3] == ["FAIL", "web-2", "10.9.0.2"]
    assert fail.rstrip().endswith("python: web-2 has no python3 (the shipyard helper runs under it) [bold]x")
    assert "hint: fix it" in output
    assert sum(1 for line in output.splitlines() if line.split()[:2] == ["ok", "ssh"]) == 2   # -v: every step


def test_check_json_and_exit_code(hw: HostsWorld) -> None:
    hw.reports.failing["web-1"] = ("ports", "the service's port 18080 is taken on web-1: 10.9.0.1:18080 by pid 7")
    code, output = run("hosts", "check", "shop", "--json")
    assert code == 1
    doc = json.loads(output)
    assert doc["ok"] is False and doc["hosts"][0]["reason"].startswith("ports: the service's port 18080")


@pytest.mark.parametrize("service,words", [("nope", "no service named 'nope'"),
                                           ("Bad Name", "is not a valid service name")])
def test_check_errors_are_one_message_and_exit_1(hw: HostsWorld, service: str, words: str) -> None:
    code, output = run("hosts", "check", service)
    assert code == 1 and "error:" in output and words in output and "Traceback" not in output


def test_drain_remove_undrain_from_the_cli(hw: HostsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.cli import hosts_state
    monkeypatch.setattr(hosts_state, "client", lambda state_dir, timeout=600.0: hw.api())
    monkeypatch.setattr(hosts_state, "POLL", 0.05)
    code, output = run("hosts", "drain", "web-1", "--no-wait")
    assert code == 0 and "web-1 (10.9.0.1): draining, 2 instance(s) on it" in output, output
    # nothing moves them here (no supervisor runs): the wait ends at its timeout, exit 1, with what to do
    code, output = run("hosts", "drain", "web-1", "--timeout", "0.2")
    assert code == 1 and "web-1: 2 instance(s) still to move" in output, output
    assert "host web-1 still runs 2 instance(s) after 0.2s" in output and "host.drain_failed" in output
    code, output = run("hosts", "remove", "web-1")
    assert code == 1 and "drain it first: shipyard hosts drain web-1" in output, output
    code, output = run("hosts", "remove", "web-2")
    assert code == 0 and "web-2 (10.9.0.2): removed" in output and "remove it from fleet.hosts" in output, output
    assert row(run("hosts")[1], "web-2")[2] == "removed"
    code, output = run("hosts", "undrain", "web-2")
    assert code == 0 and "web-2 (10.9.0.2): up" in output, output
    code, output = run("hosts", "drain", "[b]x[/b]", "--no-wait")
    assert code == 1 and '"[b]x[/b]" is not a fleet host name or address' in output, output
    code, output = run("hosts", "undrain", "web-9")
    assert code == 1 and "no fleet host named 'web-9'" in output, output
