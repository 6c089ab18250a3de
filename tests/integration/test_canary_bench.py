"""Smoke run of benchmarks/canary_detection.py --quick (HAProxy): a live bad canary of each kind,
an A/A canary whose series are recorded from HAProxy's log ring, the replays, a JSON with
every figure the doc table reads, and no process left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_router_support import short_tmpdir

from support.bench import run_quick

pytestmark = pytest.mark.timeout(300)


def test_canary_quick_measures_haproxy_live_and_replayed() -> None:
    with short_tmpdir() as tmp:      # HAProxy's unix sockets live under it: paths must stay short
        # exit 1 is a missed goal (one run each on a shared machine), reported in the JSON; not a crash
        proc, res = run_quick("canary_detection.py", "--output", tmp, timeout=280, exit_codes=(0, 1))
        assert list(res["routers"]) == ["haproxy"]
        assert (proc.returncode == 0) == res["ok"] == (not res["missed"])
        r = res["routers"]["haproxy"]
        for key in ("errors", "latency"):
            run = r["live_runs"][key][0]
            assert run["canary_requests"] > 0 and run["load"]["requests"] > 0, run
            assert run["phase"] in ("failed", "succeeded", "aborted", "paused", "progressing"), run
        # the A/A seconds come from HAProxy's log ring: both tracks counted, about 5 % on the canary
        trace = r["replay"]["trace"]
        assert trace["seconds"] >= 30
        assert trace["canary"]["requests"] > 0 and trace["stable"]["requests"] > 0, trace
        share = trace["canary"]["requests"] / (trace["canary"]["requests"] + trace["stable"]["requests"])
        assert 0.01 < share < 0.15, trace
        for key in ("aa", "aa_resplit", "aa_synthetic", "errors", "latency"):
            assert r["replay"][key]["runs"] > 0
        assert Path(r["aa_series"]).exists()
        assert "| haproxy | (a) 10 % errors, live |" in proc.stdout

