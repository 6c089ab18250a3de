"""The baselines the benchmark compares us with, on hand-made series with known answers."""

from __future__ import annotations

from shipyard import histogram
from shipyard.analysis.baselines import fixed_horizon, flagger_rule, sequential_rule
from shipyard.analysis.series import Second

B20 = histogram.bucket_of(20.0)
T0 = 1_700_000_000


def _series(seconds: int, canary_errors_per_s: int, *, canary_bucket: int = B20,
            idle: range = range(0)) -> list[tuple[Second, Second]]:
    """10 canary and 190 stable requests a second; stable has one error a second (0.53 %)."""
    out = []
    for i in range(seconds):
        t = T0 + i
        n = 0 if i in idle else 10
        canary = Second(t, n, min(n, canary_errors_per_s), {canary_bucket: n} if n else {})
        stable = Second(t, 190, 1, {B20 - 1: 95, B20: 95})
        out.append((canary, stable))
    return out


def test_flagger_rule_aborts_at_the_fifth_failed_one_minute_check() -> None:
    d = flagger_rule(_series(600, 1))
    assert d.status == "failed"
    assert d.t == T0 + 5 * 60 - 1
    assert d.detail == "5 failed checks (last: success rate 90.0% < 99.0% over 60s) >= threshold 5"


def test_flagger_rule_passes_a_good_canary_and_skips_intervals_without_traffic() -> None:
    d = flagger_rule(_series(600, 0, idle=range(60, 120)))
    assert d.status == "successful" and d.t == T0 + 599
    assert d.detail == "0 of 9 checks failed (< threshold 5)"


def test_flagger_rule_parameters() -> None:
    d = flagger_rule(_series(600, 1), interval=30, threshold=2, min_success=0.85)
    assert d.status == "successful"
    d = flagger_rule(_series(600, 1), interval=30, threshold=2, min_success=0.95)
    assert d.status == "failed" and d.t == T0 + 59


def test_fixed_horizon_decides_once_at_the_horizon() -> None:
    bad = fixed_horizon(_series(400, 1), horizon=300)
    assert bad.status == "failed" and bad.t == T0 + 299
    assert bad.detail.startswith("canary error rate 10.0% (300/3000) vs stable 0.526% (300/57000)")
    good = fixed_horizon(_series(400, 0), horizon=300)
    assert good.status == "successful" and good.t == T0 + 299
    slow = fixed_horizon(_series(400, 0, canary_bucket=B20 + 15), horizon=300)
    assert slow.status == "failed" and "Mann-Whitney" in slow.detail
    short = fixed_horizon(_series(100, 1), horizon=300)
    assert short.status == "inconclusive" and short.t == T0 + 99


def test_sequential_rule_stops_a_bad_canary_in_seconds_and_passes_a_good_one() -> None:
    bad = sequential_rule(_series(600, 1))
    assert bad.status == "failed" and bad.t is not None and bad.t - T0 < 10
    assert bad.detail.startswith("canary error rate 10.0%")
    slow = sequential_rule(_series(600, 0, canary_bucket=B20 + 15))
    assert slow.status == "failed" and slow.t is not None and slow.t - T0 < 5
    good = sequential_rule(_series(300, 0))
    assert good.status == "successful" and good.t == T0 + 299


def test_empty_series_decide_nothing() -> None:
    for rule in (flagger_rule, fixed_horizon, sequential_rule):
        d = rule([])
        assert d.status == "inconclusive" and d.t is None
