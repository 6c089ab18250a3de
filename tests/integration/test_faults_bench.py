"""Smoke run of benchmarks/faults.py --quick: it runs every phase against a real daemon,
router and instances, writes its JSON where asked, and leaves no process behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.bench import run_quick

pytestmark = pytest.mark.timeout(300)


def test_faults_quick_measures_every_phase(tmp_path: Path) -> None:
    _proc, res = run_quick("faults.py", "--json", tmp_path, timeout=280)

    kill = res["router_kill"]
    assert len(kill["kills"]) == 1 and kill["requests_ok"] > 0
    k = kill["kills"][0]
    assert k["new_pid"] and k["new_pid"] != k["killed_pid"]
    assert k["answering_again_ms"] is not None and k["longest_gap_ms"] >= kill["baseline_longest_gap_ms"] > 0

    over = res["overload"]
    for run in (over["baseline"], over["switching"]):
        assert run["requests"] > 0 and run["p99_ms"] > 0 and run["failed"] >= 0
    assert over["switches"] >= 1 and over["p99_ratio"] > 0

    soak = res["soak"]
    assert soak["switches"] >= 4 and soak["requests_ok"] > 0 and soak["samples"] >= 3
    assert soak["daemon_rss_slope_kib_per_min"] is not None and soak["router_fds_range"] is not None

