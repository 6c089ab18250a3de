"""Simulated rollouts: the sequential monitors' false-abort rate and detection time.

Seeded numpy simulations of whole rollouts, many runs at once through BatchMonitors
(the same arithmetic as the per-rollout state; test_analysis_sequential checks they
agree). Traffic is Poisson, so each latency bucket's count in a second is an
independent Poisson draw; errors are binomial among the requests. The figures
printed here (pytest -s) are the ones quoted in docs/analysis.md."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from shipyard import histogram
from shipyard.analysis import martingale as mg
from shipyard.analysis.batch import BatchMonitors
from shipyard.analysis.sequential import plans_for
from shipyard.spec.strategy import CompareToStableMetric

ALPHA = 0.05
EDGES = np.array(histogram.BOUNDS_MS)


def latency(median: float = 20.0, sigma: float = 0.5, *, slower: float = 1.0, plus_ms: float = 0.0) -> np.ndarray:
    """Probability of each histogram bucket for a lognormal latency, scaled and/or shifted."""
    cdf = np.append(stats.lognorm.cdf((EDGES - plus_ms) / slower, sigma, scale=median), 1.0)
    p = np.diff(np.concatenate([[0.0], cdf]))
    p[p < 1e-6] = 0.0
    return p / p.sum()


Rate = Callable[[int], float]


def _const(x: float) -> Rate:
    return lambda _t: x


@dataclass
class Scenario:
    runs: int
    seconds: int
    seed: int
    rate: Rate = field(default_factory=lambda: _const(200.0))
    """Total requests per second at second t."""
    weight: Rate = field(default_factory=lambda: _const(0.05))
    canary_error: Rate = field(default_factory=lambda: _const(0.005))
    stable_error: Rate = field(default_factory=lambda: _const(0.005))
    canary_latency: Callable[[int], np.ndarray] = field(default_factory=lambda: lambda _t: LAT)
    stable_latency: Callable[[int], np.ndarray] = field(default_factory=lambda: lambda _t: LAT)
    tolerance: float = 0.1


LAT = latency()


@dataclass
class Outcome:
    monitors: BatchMonitors
    canary_errors_before_abort: np.ndarray
    naive_fisher_aborts: np.ndarray
    """For the first `naive_runs` runs: did a one-sided Fisher test at alpha, repeated every 10 s on
    all data so far, ever fire?"""

    @property
    def failure(self) -> np.ndarray:
        return self.monitors.first_failure()

    @property
    def abort_rate(self) -> float:
        return float(np.mean(self.failure >= 0))

    def detection_seconds(self) -> np.ndarray:
        """Seconds of canary traffic until the abort: a failure in second t means t + 1 seconds seen."""
        f = self.failure
        return (f[f >= 0] + 1).astype(float)


def _poisson_hist(rng: np.random.Generator, lam: float, p: np.ndarray, runs: int) -> np.ndarray:
    idx = np.flatnonzero(p)
    out = np.zeros((runs, mg.B), dtype=np.int64)
    out[:, idx] = rng.poisson(lam * p[idx], (runs, len(idx)))
    return out


def simulate(sc: Scenario, naive_runs: int = 0) -> Outcome:
    rng = np.random.default_rng(sc.seed)
    plans = plans_for([("vs-stable", CompareToStableMetric(tolerance=sc.tolerance))], ALPHA)
    monitors = BatchMonitors(sc.runs, plans)
    served_errors = np.zeros(sc.runs, dtype=np.int64)
    errors_at_abort = np.full(sc.runs, -1, dtype=np.int64)
    totals = np.zeros((4, sc.runs), dtype=np.int64)      # canary n, canary errors, stable n, stable errors
    naive = np.zeros(naive_runs, dtype=bool)
    for t in range(sc.seconds):
        w = sc.weight(t)
        hc = _poisson_hist(rng, sc.rate(t) * w, sc.canary_latency(t), sc.runs)
        hs = _poisson_hist(rng, sc.rate(t) * (1 - w), sc.stable_latency(t), sc.runs)
        nc, ns = hc.sum(axis=1), hs.sum(axis=1)
        ec, es = rng.binomial(nc, sc.canary_error(t)), rng.binomial(ns, sc.stable_error(t))
        monitors.step(t, mg.Tick(nc, ec, hc, ns, es, hs))
        served_errors += ec
        newly = (monitors.first_failure() == t)
        errors_at_abort[newly] = served_errors[newly]
        totals += np.array([nc, ec, ns, es])
        if naive_runs and (t + 1) % 10 == 0:
            n1, a, n2, b = totals[:, :naive_runs]
            p = stats.hypergeom.sf(a - 1, n1 + n2, n1, a + b)
            naive |= (a > 0) & (p < ALPHA)
    return Outcome(monitors, errors_at_abort, naive)


def _margin(runs: int, alpha: float = ALPHA) -> float:
    """One-sided 99 % binomial margin on a rate measured over `runs` runs."""
    return 2.33 * math.sqrt(alpha * (1 - alpha) / runs)


def _report(name: str, out: Outcome) -> None:
    per = {k.split("/")[1]: float(np.mean(v >= 0)) for k, v in out.monitors.crossed_at.items()}
    print(f"\n[{name}] runs={out.monitors.runs} abort rate={out.abort_rate:.4f} per monitor={per}")


def test_aa_false_abort_rate_is_within_alpha_looking_every_second() -> None:
    """Identical releases, 600 s at 5 % of 200 req/s, verdict read after every second."""
    out = simulate(Scenario(runs=500, seconds=600, seed=11), naive_runs=200)
    _report("A/A", out)
    naive = float(np.mean(out.naive_fisher_aborts))
    print(f"[A/A] Fisher's test repeated every 10 s would have aborted {naive:.3f} of the first 200 runs")
    assert out.abort_rate <= ALPHA + _margin(500)
    # the reason for the sequential test: the classical test, looked at repeatedly, is not valid
    assert naive > 2 * ALPHA


def test_aa_with_nonstationary_traffic_errors_and_latency_stays_within_alpha() -> None:
    """Traffic swings 5x (80..400 req/s), the canary weight steps 1 % -> 5 % -> 25 %, and the
    error rate and latency of BOTH releases rise with load: identical releases all the same."""
    def rate(t: int) -> float:
        return 240 + 160 * math.sin(2 * math.pi * t / 240)

    def weight(t: int) -> float:
        return 0.01 if t < 150 else 0.05 if t < 350 else 0.25

    def error(t: int) -> float:
        return 0.002 + 0.008 * (rate(t) - 80) / 320

    lat_by_load = [latency(median=15 + 25 * i / 9) for i in range(10)]

    def lat(t: int) -> np.ndarray:
        return lat_by_load[min(9, int((rate(t) - 80) / 32))]

    out = simulate(Scenario(runs=300, seconds=600, seed=12, rate=rate, weight=weight, canary_error=error,
                            stable_error=error, canary_latency=lat, stable_latency=lat))
    _report("A/A nonstationary", out)
    assert out.abort_rate <= ALPHA + _margin(300)


def test_a_canary_slower_but_within_tolerance_is_not_failed() -> None:
    for slower, runs, seed in ((1.05, 200, 13), (1.10, 200, 14)):   # 5 % slower, and exactly at the tolerance
        lat = latency(slower=slower)
        out = simulate(Scenario(runs=runs, seconds=600, seed=seed, canary_latency=lambda _t, lat=lat: lat))
        _report(f"{slower:g}x slower, tolerance 0.1", out)
        assert out.abort_rate <= ALPHA + _margin(runs)


def test_a_canary_with_10_percent_errors_is_stopped_in_seconds() -> None:
    out = simulate(Scenario(runs=200, seconds=60, seed=15, canary_error=_const(0.10)))
    secs = out.detection_seconds()
    failed_requests = out.canary_errors_before_abort[out.canary_errors_before_abort >= 0]
    print(f"\n[10% errors] detected {out.abort_rate:.3f}; seconds to abort: median {np.median(secs):g}, "
          f"p90 {np.percentile(secs, 90):g}, max {secs.max():g}; failed canary requests before the abort: "
          f"median {np.median(failed_requests):g}, p90 {np.percentile(failed_requests, 90):g}")
    assert out.abort_rate == 1.0
    assert np.median(secs) <= 5 and np.percentile(secs, 90) <= 10


def test_a_canary_50ms_slower_is_stopped_in_seconds() -> None:
    slow = latency(plus_ms=50.0)
    out = simulate(Scenario(runs=200, seconds=30, seed=16, canary_latency=lambda _t: slow))
    secs = out.detection_seconds()
    print(f"\n[+50 ms] detected {out.abort_rate:.3f}; seconds to abort: median {np.median(secs):g}, "
          f"max {secs.max():g}")
    assert out.abort_rate == 1.0 and np.median(secs) <= 3


def test_a_canary_that_turns_bad_late_is_still_stopped_in_seconds() -> None:
    """Ten good minutes first: without the restarted epochs the evidence would start deep below 1."""
    onset = 600
    out = simulate(Scenario(runs=100, seconds=onset + 60, seed=17,
                            canary_error=lambda t: 0.10 if t >= onset else 0.005))
    f = out.failure
    early = int(np.sum((f >= 0) & (f < onset)))
    secs = (f[f >= onset] - onset + 1).astype(float)
    print(f"\n[10% errors after {onset} good seconds] early aborts {early}; seconds to abort after onset: "
          f"median {np.median(secs):g}, p90 {np.percentile(secs, 90):g}")
    assert len(secs) + early == 100
    assert np.median(secs) <= 10


def test_moderate_regressions_are_found_given_time() -> None:
    """Three times stable's error rate, and a 40 % slower canary: slower to see, but seen."""
    slow = latency(slower=1.4)
    for name, sc in (("3x errors", Scenario(runs=100, seconds=600, seed=18, canary_error=_const(0.015))),
                     ("1.4x slower", Scenario(runs=100, seconds=300, seed=19, canary_latency=lambda _t: slow))):
        out = simulate(sc)
        secs = out.detection_seconds()
        print(f"\n[{name}] detected {out.abort_rate:.2f} within {sc.seconds}s; median {np.median(secs):g}s")
        assert out.abort_rate >= 0.9
