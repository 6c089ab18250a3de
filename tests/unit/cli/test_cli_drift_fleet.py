"""`shipyard drift` on a fleet service: each finding's host in its own column and a changed
file's path on that host under the detail; a one-machine report keeps its three columns."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from shipyard.cli import common
from shipyard.cli import drift as drift_cli

TREE = "/root/.shipyard/images/trees/" + "a" * 64


def report(findings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"service": "shop", "clean": not findings, "mode": "full", "scanned_at": 0.0, "instances_scanned": 5,
            "files_checked": 10, "bytes_hashed": 0, "seconds": 0.1, "findings": findings, "notes": []}


def recording(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buf = io.StringIO()
    console = Console(file=buf, width=300, color_system=None)
    monkeypatch.setattr(common, "out", console)
    monkeypatch.setattr(drift_cli, "out", console)
    return buf


def test_a_fleet_finding_names_its_host_and_the_path_there(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = recording(monkeypatch)
    paths = ["shop/a.py", "shop/b.py", "shop/c.py", "shop/d.py"]
    drift_cli._print({"report": report([
        {"kind": "content", "instance_id": "shop-blue-1", "host": "web-3", "paths": paths,
         "detail": "web-3: image aaaaaaaaaaaa: 4 path(s) changed content: shop/a.py, ...",
         "evidence": {"host_paths": [f"{TREE}/{p}" for p in paths], "host": "web-3"}},
        {"kind": "unknown", "instance_id": None, "host": "web-4", "paths": [],
         "detail": "web-4: could not be scanned: [red]no answer[/]", "evidence": {}}])})
    shown = buf.getvalue()
    assert "HOST" in shown and "web-3" in shown
    assert f"web-3:{TREE}/shop/a.py" in shown and f"web-3:{TREE}/shop/c.py" in shown
    assert f"{TREE}/shop/d.py" not in shown and "(+1 more)" in shown
    assert "[red]no answer[/]" in shown           # data printed as text, never as markup


def test_a_one_machine_report_has_no_host_column(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = recording(monkeypatch)
    drift_cli._print({"report": report([{"kind": "content", "instance_id": "shop-blue-1", "paths": ["x"],
                                         "detail": "image aaaa: 1 path(s) changed content: x", "evidence": {}}])})
    assert "HOST" not in buf.getvalue() and "KIND" in buf.getvalue()
