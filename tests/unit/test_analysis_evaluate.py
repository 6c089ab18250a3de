"""One analysis tick over a whole spec: which judges speak, when, and what the overall status is."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shipyard import histogram
from shipyard.analysis import Second, SequentialState, Window, evaluate, overall
from shipyard.spec.strategy import AnalysisSpec

SPEC = AnalysisSpec.model_validate({"min_requests": 50, "alpha": 0.05, "metrics": [
    {"name": "success", "success_rate": {"min": 0.95}},
    {"name": "p99", "latency": {"quantile": 0.99, "max": "500ms"}},
    {"name": "vs-stable", "compare_to_stable": {"tolerance": 0.1}},
    {"name": "prom", "prometheus": {"query": "sum(rate(x[1m]))", "max": 5}},
]})


def _pairs(seed: int, seconds: int, canary_error: float, canary_extra_ms: float = 0.0) -> list[tuple[Second, Second]]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(5000, 5000 + seconds):
        pair = []
        for n, p, extra in ((int(rng.poisson(10)), canary_error, canary_extra_ms),
                            (int(rng.poisson(190)), 0.005, 0.0)):
            lat: dict[int, int] = {}
            for x in rng.lognormal(math.log(20), 0.4, n) + extra:
                b = histogram.bucket_of(float(x))
                lat[b] = lat.get(b, 0) + 1
            pair.append(Second(t, n, int(rng.binomial(n, p)), lat))
        out.append((pair[0], pair[1]))
    return out


def _windows(pairs: list[tuple[Second, Second]]) -> tuple[Window, Window]:
    return Window.of(c for c, _ in pairs), Window.of(s for _, s in pairs)


def test_a_good_canary_at_the_end_of_its_window_is_successful_except_for_prometheus() -> None:
    pairs = _pairs(1, 60, 0.005)
    verdicts, state = evaluate(SPEC, *_windows(pairs), None, pairs, final=True)
    assert [(v.metric, v.kind) for v in verdicts] == [
        ("success", "success_rate"), ("p99", "latency"),
        ("vs-stable", "sequential_error_rate"), ("vs-stable", "sequential_latency_p50"),
        ("vs-stable", "sequential_latency_p90"), ("vs-stable", "error_rate_vs_stable"),
        ("vs-stable", "latency_vs_stable"), ("prom", "prometheus")]
    assert [v.status for v in verdicts[:-1]] == ["successful"] * 7, [v.detail for v in verdicts]
    assert verdicts[-1].status == "inconclusive"
    assert verdicts[-1].detail == "prometheus provider not configured: this metric cannot be judged yet"
    assert verdicts[1].threshold == pytest.approx(500.0)
    assert state.last_t == 5059
    json.dumps([v.to_dict() for v in verdicts], allow_nan=False)     # stored with the rollout as strict JSON
    json.dumps(state.to_dict(), allow_nan=False)
    no_prom = AnalysisSpec.model_validate({**SPEC.model_dump(), "metrics": SPEC.model_dump()["metrics"][:3]})
    assert overall(evaluate(no_prom, *_windows(pairs), None, pairs, final=True)[0]) == "successful"


def test_between_ticks_only_anytime_valid_judges_and_thresholds_speak() -> None:
    pairs = _pairs(2, 30, 0.005)
    verdicts, _ = evaluate(SPEC, *_windows(pairs), None, pairs)
    kinds = [v.kind for v in verdicts]
    assert "error_rate_vs_stable" not in kinds and "latency_vs_stable" not in kinds
    assert {v.status for v in verdicts if v.kind.startswith("sequential")} == {"inconclusive"}
    assert overall(verdicts) == "inconclusive"


def test_a_bad_canary_fails_within_seconds_in_the_background() -> None:
    spec = AnalysisSpec.model_validate({"metrics": [{"name": "vs-stable", "compare_to_stable": {}}]})
    pairs = _pairs(3, 60, 0.10)
    state: SequentialState | None = None
    failed_at = None
    for i in range(0, 60, 5):       # the background monitor ticks every 5 s with the new seconds
        window = pairs[: i + 5]
        verdicts, state = evaluate(spec, *_windows(window), state, pairs[i:i + 5])
        if overall(verdicts) == "failed":
            failed_at = i + 5
            break
    assert failed_at is not None and failed_at <= 15
    assert [v.kind for v in verdicts if v.status == "failed"] == ["sequential_error_rate"]


def test_plus_50ms_is_failed_by_the_sequential_latency_monitor() -> None:
    pairs = _pairs(4, 10, 0.005, canary_extra_ms=50.0)
    verdicts, _ = evaluate(SPEC, *_windows(pairs), None, pairs)
    failed = {v.kind for v in verdicts if v.status == "failed"}
    assert {"sequential_latency_p50", "sequential_latency_p90"} <= failed


def test_feeding_overlapping_ranges_counts_each_second_once() -> None:
    pairs = _pairs(5, 40, 0.005)
    _, once = evaluate(SPEC, *_windows(pairs), None, pairs)
    _, first = evaluate(SPEC, *_windows(pairs[:25]), None, pairs[:25])
    _, twice = evaluate(SPEC, *_windows(pairs), first, pairs[10:])
    assert twice == once


def test_a_fixed_horizon_regression_pauses_for_a_human_instead_of_aborting() -> None:
    """No seconds fed (so no sequential evidence), but the window shows a clear regression."""
    canary, stable = Window(600, 30, {60: 600}), Window(11400, 57, {60: 11400})
    spec = AnalysisSpec.model_validate({"metrics": [{"name": "vs", "compare_to_stable": {"latency": False}}]})
    verdicts, _ = evaluate(spec, canary, stable, None, final=True)
    fixed = [v for v in verdicts if v.kind == "error_rate_vs_stable"][0]
    assert fixed.status == "inconclusive"
    assert fixed.evidence["fixed_horizon_status"] == "failed"
    assert fixed.detail.startswith("fixed-horizon test flags a regression (advisory: it pauses for a human; "
                                   "only the sequential test aborts on its own): canary error rate 5.00% (30/600)")
    assert overall(verdicts) == "inconclusive"


def test_too_few_canary_requests_at_the_end_is_inconclusive() -> None:
    pairs = _pairs(6, 3, 0.005)
    verdicts, _ = evaluate(SPEC, *_windows(pairs), None, pairs, final=True)
    seq = [v for v in verdicts if v.kind == "sequential_error_rate"][0]
    assert seq.status == "inconclusive" and seq.detail.startswith("only ")
    assert "need 50 (min_requests)" in seq.detail
