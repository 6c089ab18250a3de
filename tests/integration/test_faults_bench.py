"""Smoke run of benchmarks/faults.py --quick: it runs every phase against a real daemon,
router and instances, writes its JSON where asked, and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "faults.py"

pytestmark = pytest.mark.timeout(300)


def test_faults_quick_measures_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())

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

    # everything it started is gone: no process names its temporary state dir any more
    left = [p for p in os.listdir("/proc") if p.isdigit() and _names(p, str(tmp_path))]
    assert left == [], left


def _names(pid: str, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
