"""Smoke run of benchmarks/router.py --quick: every target answers through its proxy, the CPU
per request of each proxy process is measured, and no process it started is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.bench import run_quick

pytestmark = pytest.mark.timeout(90)


def test_router_quick_measures_every_available_target(tmp_path: Path) -> None:
    proc, res = run_quick("router.py", "--json", tmp_path, timeout=80)
    t = res["targets"]
    for name in ("direct", "embedded", "embedded-2", "haproxy"):
        assert t[name]["rps"] > 0 and t[name]["p99_ms"] >= t[name]["p50_ms"] > 0, (name, t[name])
        assert t[name]["failed"] == 0, (name, t[name])
    for name in ("embedded", "embedded-2", "haproxy"):  # the proxy process burnt CPU for the requests it relayed
        assert t[name]["proxy_us_per_request"] > 0, (name, t[name])
    assert t["direct"]["proxy_us_per_request"] is None and t["direct"]["backend_us_per_request"] > 0
    assert res["embedded_over_haproxy_per_core"] > 0
    if "shipyard-haproxy" not in t:  # the 4th column is skipped with a note until that router exists
        assert res["shipyard_haproxy"].startswith("skipped: ")
    assert "| embedded router (one process) |" in proc.stdout
    assert "| embedded router, 2 workers" in proc.stdout
    split = res["embedded_2_requests_per_worker"]      # both workers' counts, merged by the router
    assert len(split) == 2 and sum(split) >= t["embedded-2"]["rps"] * 0.5, split

