"""Fixed-horizon comparison with stable: the statistics checked against scipy and brute force,
and the verdicts on hand-made windows."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats

from shipyard import histogram
from shipyard.analysis.compare import (
    error_rate_vs_stable,
    fisher_p,
    hodges_lehmann_ms,
    latency_vs_stable,
    mann_whitney,
    representative_ms,
)
from shipyard.analysis.series import Window

B20 = histogram.bucket_of(20.0)
B70 = histogram.bucket_of(70.0)


def _expand(counts: dict[int, int]) -> np.ndarray:
    return np.repeat([representative_ms(k) for k in counts], list(counts.values()))


def _random_hist(rng: np.random.Generator, n: int, median: float) -> dict[int, int]:
    out: dict[int, int] = {}
    for x in rng.lognormal(math.log(median), 0.5, n):
        b = histogram.bucket_of(float(x))
        out[b] = out.get(b, 0) + 1
    return out


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_from_counts_equals_scipy_on_expanded_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = _random_hist(rng, int(rng.integers(5, 400)), 20 * (1 + 0.1 * seed))
    s = _random_hist(rng, int(rng.integers(5, 400)), 20.0)
    ours = mann_whitney(c, s)
    ref = stats.mannwhitneyu(_expand(c), _expand(s), alternative="greater", method="asymptotic")
    assert ours.u == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


def test_mann_whitney_with_everything_in_one_bucket_has_no_evidence() -> None:
    assert mann_whitney({40: 10}, {40: 30}).p == 1.0
    assert mann_whitney({}, {40: 30}).p == 1.0


def test_hodges_lehmann_equals_the_median_of_all_pairwise_differences() -> None:
    rng = np.random.default_rng(9)
    for _ in range(5):
        c, s = _random_hist(rng, 61, 30.0), _random_hist(rng, 47, 20.0)
        brute = float(np.median(np.subtract.outer(_expand(c), _expand(s))))
        assert hodges_lehmann_ms(c, s) == pytest.approx(brute, rel=1e-12)
    assert hodges_lehmann_ms({}, {3: 1}) is None


def test_fisher_without_tolerance_is_scipys_one_sided_fisher_exact() -> None:
    for a, n1, b, n2 in [(3, 10, 1, 190), (31, 301, 2, 1840), (0, 50, 4, 900), (7, 700, 60, 6000)]:
        ref = stats.fisher_exact([[a, n1 - a], [b, n2 - b]], alternative="greater").pvalue
        assert fisher_p(a, n1, b, n2, 0.0) == pytest.approx(ref, rel=1e-9)


def test_fisher_with_tolerance_is_the_noncentral_hypergeometric_tail() -> None:
    """Independent check: sum the noncentral hypergeometric probabilities by hand."""
    a, n1, b, n2, odds = 6, 40, 9, 160, 1.5
    k = a + b
    support = range(max(0, k - n2), min(k, n1) + 1)
    weight = {x: math.comb(n1, x) * math.comb(n2, k - x) * odds ** x for x in support}
    expected = sum(w for x, w in weight.items() if x >= a) / sum(weight.values())
    assert fisher_p(a, n1, b, n2, odds - 1) == pytest.approx(expected, rel=1e-6)
    # a larger tolerance is a weaker claim: the p-value can only grow
    ps = [fisher_p(a, n1, b, n2, tol) for tol in (0.0, 0.1, 0.5, 1.0, 3.0)]
    assert ps == sorted(ps)


def test_error_rate_regression_fails_with_the_numbers() -> None:
    v = error_rate_vs_stable("vs", Window(301, 31), Window(1840, 2), 0.1, 0.05, 50)
    assert v.status == "failed" and v.kind == "error_rate_vs_stable"
    assert v.detail == ("canary error rate 10.3% (31/301) vs stable 0.109% (2/1840): one-sided Fisher exact "
                        "(H0: odds ratio <= 1.1) p = 1.0e-12 < alpha = 0.05 and 10.3% > stable x 1.1 + "
                        "0.100% floor = 0.220%")
    assert v.value == pytest.approx(1.018e-12, rel=1e-3)


def test_error_rate_significant_but_under_the_floor_passes() -> None:
    """5 errors in 10,000 where stable has none: real, but 0.05 % is under the 0.1 point floor."""
    v = error_rate_vs_stable("vs", Window(10000, 5), Window(10000, 0), 0.0, 0.05, 50)
    assert v.status == "successful"
    assert v.detail == ("canary error rate 0.0500% (5/10000) vs stable 0.0% (0/10000): one-sided Fisher exact "
                        "p = 0.0312 < alpha = 0.05 but 0.0500% <= stable x 1 + 0.100% floor = 0.100%")


def test_error_rate_within_tolerance_passes() -> None:
    v = error_rate_vs_stable("vs", Window(1000, 6), Window(19000, 95), 0.1, 0.05, 50)
    assert v.status == "successful"
    assert v.detail.endswith("p = 0.478 >= alpha = 0.05")


def test_error_rate_needs_min_requests_on_both_tracks() -> None:
    v = error_rate_vs_stable("vs", Window(400, 40), Window(30, 0), 0.1, 0.05, 50)
    assert v.status == "inconclusive"
    assert v.detail == "400 canary and 30 stable requests so far; need 50 of each (min_requests) to compare"


def test_latency_plus_50ms_fails_with_shift_and_p_value() -> None:
    canary = Window(100, 0, {B70: 50, B70 + 1: 50})
    stable = Window(1000, 0, {B20: 500, B20 + 1: 500})
    v = latency_vs_stable("vs", canary, stable, 0.1, 0.05, 50)
    assert v.status == "failed"
    assert v.detail == ("canary - stable latency shift 50.9 ms (Hodges-Lehmann; stable median 21.5 ms, "
                        "n=100 vs 1000): one-sided Mann-Whitney p = 2.9e-75 < alpha = 0.05 and shift 50.9 ms > "
                        "2.15 ms (0.1 x stable median)")


def test_latency_slightly_slower_is_significant_but_within_tolerance() -> None:
    """One bucket (9 %) slower for half the requests: Mann-Whitney sees it, the tolerance forgives it."""
    canary = Window(4000, 0, {B20: 1000, B20 + 1: 2000, B20 + 2: 1000})
    stable = Window(4000, 0, {B20 - 1: 1000, B20: 2000, B20 + 1: 1000})
    v = latency_vs_stable("vs", canary, stable, 0.1, 0.05, 50)
    assert v.status == "successful"
    assert "< alpha = 0.05 but shift" in v.detail
    assert v.evidence["shift_ms"] < 0.1 * v.evidence["stable_median_ms"]


def test_latency_identical_is_not_significant() -> None:
    w = Window(100, 0, {B20: 50, B20 + 1: 50})
    v = latency_vs_stable("vs", w, Window(1000, 0, {B20: 500, B20 + 1: 500}), 0.1, 0.05, 50)
    assert v.status == "successful" and v.value is not None and v.value > 0.4


def test_a_million_requests_are_judged_from_counts_quickly() -> None:
    rng = np.random.default_rng(1)
    buckets = np.arange(B20 - 20, B20 + 20)
    c = dict(zip(buckets.tolist(), rng.multinomial(1_000_000, np.full(40, 1 / 40)).tolist(), strict=True))
    s = dict(zip(buckets.tolist(), rng.multinomial(3_000_000, np.full(40, 1 / 40)).tolist(), strict=True))
    start = time.perf_counter()
    v = latency_vs_stable("vs", Window(1_000_000, 0, c), Window(3_000_000, 0, s), 0.1, 0.05, 50)
    e = error_rate_vs_stable("vs", Window(1_000_000, 5_000), Window(3_000_000, 15_100), 0.1, 0.05, 50)
    assert time.perf_counter() - start < 2.0
    assert v.status == "successful" and e.status == "successful"
