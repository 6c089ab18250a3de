"""The sequential monitors: the martingale arithmetic checked by hand and by exact expectation,
and the state's behaviour (sticky failures, idempotent re-feeding, resuming, epochs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from shipyard import histogram
from shipyard.analysis import martingale as mg
from shipyard.analysis.batch import BatchMonitors, tick_of
from shipyard.analysis.sequential import (
    SequentialState,
    advance,
    plans_for,
    plans_of,
    update,
    verdict,
)
from shipyard.analysis.series import Second
from shipyard.analysis.verdict import num
from shipyard.spec.strategy import AnalysisSpec, CompareToStableMetric

B20 = histogram.bucket_of(20.0)


def _conditional_log_lr(x_c: int, x_s: int, n_c: int, n_s: int, rho0: float, g: float) -> float:
    """log of (theta/pi0)^x_c ((1-theta)/(1-pi0))^x_s, written out from the definitions."""
    theta = rho0 * g * n_c / (rho0 * g * n_c + n_s)
    pi0 = rho0 * n_c / (rho0 * n_c + n_s)
    return x_c * math.log(theta / pi0) + x_s * math.log((1 - theta) / (1 - pi0))


def test_log_factors_are_the_conditional_binomial_likelihood_ratios() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_c, n_s = int(rng.integers(1, 40)), int(rng.integers(1, 400))
        x_c, x_s = int(rng.integers(0, n_c + 1)), int(rng.integers(0, n_s + 1))
        rho0 = float(rng.choice([1.0, 1.1, 1.5]))
        got = mg.log_factors(np.array(x_c), np.array(x_s), np.array(n_c), np.array(n_s), rho0)
        want = [_conditional_log_lr(x_c, x_s, n_c, n_s, rho0, g) for g in mg.GRID]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_log_factors_learn_nothing_from_one_sided_or_empty_seconds() -> None:
    zero = mg.log_factors(np.array([0, 0, 0]), np.array([0, 3, 0]), np.array([0, 0, 5]), np.array([0, 50, 0]), 1.1)
    assert np.all(zero == 0.0)


def _expected_factor(n_c: int, n_s: int, p_c: float, p_s: float, rho0: float) -> np.ndarray:
    """E[f(rho)] for every grid point, summing over all outcomes of two binomials exactly."""
    xc, xs = np.arange(n_c + 1), np.arange(n_s + 1)
    prob = np.outer(stats.binom.pmf(xc, n_c, p_c), stats.binom.pmf(xs, n_s, p_s))
    f = np.exp(mg.log_factors(xc[:, None], xs[None, :], np.array(n_c), np.array(n_s), rho0))
    return np.einsum("ij,ijk->k", prob, f)


@pytest.mark.parametrize(("n_c", "n_s", "p_s", "tol"), [
    (10, 190, 0.005, 0.1), (10, 190, 0.3, 0.1), (3, 40, 0.02, 0.0), (50, 50, 0.2, 0.5), (1, 500, 0.01, 0.1)])
def test_every_component_is_a_supermartingale_under_the_null(n_c: int, n_s: int, p_s: float, tol: float) -> None:
    """At the null's boundary and inside it, E[f] <= 1 for every alternative; beyond it, not."""
    rho0 = 1 + tol
    at_boundary = _expected_factor(n_c, n_s, rho0 * p_s, p_s, rho0)
    inside = _expected_factor(n_c, n_s, 0.5 * p_s, p_s, rho0)
    assert np.all(at_boundary <= 1 + 1e-12) and np.all(inside <= 1 + 1e-12)
    worse = _expected_factor(n_c, n_s, min(1.0, 3 * rho0 * p_s), p_s, rho0)
    assert worse.max() > 1.01


def _sec(t: int, n: int, e: int, latency: dict[int, int] | None = None) -> Second:
    return Second(t=t, requests=n, errors=e, latency=latency if latency is not None else {B20: n})


def test_three_canary_errors_in_one_second_fail_it_with_the_numbers() -> None:
    state, verdicts = update(None, _sec(100, 10, 3), _sec(100, 190, 0), tolerance=0.1, alpha=0.05)
    errors = verdicts[0]
    # by hand: epoch 1 has weight 1/2; the mixture is the mean over the grid of the likelihood ratios
    e = 0.5 * float(np.mean([math.exp(_conditional_log_lr(3, 0, 10, 190, 1.1, g)) for g in mg.GRID]))
    assert errors.kind == "sequential_error_rate" and errors.status == "failed"
    assert errors.value == pytest.approx(e, rel=1e-9) and e >= 60
    assert errors.threshold == pytest.approx(60.0)
    assert errors.detail == (f"canary error rate 30.0% (3/10) vs stable 0.0% (0/190); null: canary <= 1.1 x "
                             f"stable: sequential e-value {num(e)} >= 3/alpha = 60 (3 monitors share alpha = "
                             f"0.05) at t=100")
    assert [v.status for v in verdicts[1:]] == ["inconclusive", "inconclusive"]   # no latency split yet


def test_a_failure_is_sticky_and_keeps_the_evidence_of_its_moment() -> None:
    state, first = update(None, _sec(100, 10, 3), _sec(100, 190, 0))
    for t in range(101, 160):
        state, later = update(state, _sec(t, 10, 0), _sec(t, 190, 5))
    assert later[0].status == "failed"
    assert later[0].detail == first[0].detail
    assert later[0].evidence["crossed"]["t"] == 100


def test_one_error_is_not_enough() -> None:
    _, verdicts = update(None, _sec(100, 10, 1), _sec(100, 190, 0))
    assert verdicts[0].status == "inconclusive"
    assert verdicts[0].detail.startswith("watching: canary error rate 10.0% (1/10) vs stable 0.0% (0/190)")


def test_seconds_already_seen_are_ignored_and_mismatched_pairs_refused() -> None:
    state, _ = update(None, _sec(100, 10, 1), _sec(100, 190, 1))
    again, _ = update(state, _sec(100, 10, 9), _sec(100, 190, 0))
    older, _ = update(state, _sec(99, 10, 9), _sec(99, 190, 0))
    assert again == state and older == state
    with pytest.raises(ValueError, match="pair seconds by t"):
        update(state, _sec(101, 10, 0), _sec(102, 190, 0))


def _stream(seed: int, seconds: int, canary_error: float) -> list[tuple[Second, Second]]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(1000, 1000 + seconds):
        pairs = []
        for n, p, med in ((int(rng.poisson(10)), canary_error, 20.0), (int(rng.poisson(190)), 0.005, 20.0)):
            lat: dict[int, int] = {}
            for x in rng.lognormal(math.log(med), 0.5, n):
                b = histogram.bucket_of(float(x))
                lat[b] = lat.get(b, 0) + 1
            pairs.append(Second(t, n, int(rng.binomial(n, p)), lat))
        out.append((pairs[0], pairs[1]))
    return out


def test_resuming_from_json_gives_exactly_the_uninterrupted_state() -> None:
    stream = _stream(1, 150, 0.005)
    plans = plans_for([("vs-stable", CompareToStableMetric())], 0.05)
    straight = SequentialState()
    for c, s in stream:
        straight = advance(straight, c, s, plans)
    resumed = SequentialState()
    for i, (c, s) in enumerate(stream):
        if i % 37 == 0:
            resumed = SequentialState.from_dict(json.loads(json.dumps(resumed.to_dict(), allow_nan=False)))
        resumed = advance(resumed, c, s, plans)
        if i == 80:   # a restarted daemon re-feeds a stretch it had already fed
            for c2, s2 in stream[60:81]:
                resumed = advance(resumed, c2, s2, plans)
    assert resumed == straight


def test_state_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        SequentialState.from_dict({"version": 99})


def test_the_batch_engine_computes_what_the_state_computes() -> None:
    """Simulations use BatchMonitors; it must agree with the per-rollout state second by second."""
    runs = [_stream(seed, 240, rate) for seed, rate in ((2, 0.005), (3, 0.02), (4, 0.10))]
    plans = plans_for([("vs-stable", CompareToStableMetric(tolerance=0.1))], 0.05)
    batch = BatchMonitors(len(runs), plans)
    states = [SequentialState() for _ in runs]
    for i in range(240):
        batch.step(runs[0][i][0].t, tick_of([r[i] for r in runs]))
        states = [advance(st, r[i][0], r[i][1], plans) for st, r in zip(states, runs, strict=True)]
    for p in plans:
        got = [verdict(st, p) for st in states]
        crossed = [int(v.evidence["crossed"]["t"]) if v.status == "failed" else -1 for v in got]
        assert crossed == batch.crossed_at[p.key].tolist(), p.key
        assert [v.value for v in got] == pytest.approx(batch.e_values(p.key).tolist(), rel=1e-9)
    assert batch.first_failure()[2] >= 0   # the 10 % canary is caught


def test_the_latency_split_only_uses_stable_seconds_before_the_current_one() -> None:
    plans = plans_for([("vs", CompareToStableMetric(error_rate=False, latency_margin=0.0))], 0.05)
    state = SequentialState()
    for t in range(3):
        state = advance(state, _sec(t, 10, 0, {B20: 10}), _sec(t, 100, 0, {B20 - 5: 50, B20: 50}), plans)
    split_before = state.monitors["vs/latency_p50"].above_ms
    # second 3: stable is suddenly much slower; the split used for second 3 must not move
    a = advance(state, _sec(3, 10, 0, {B20: 10}), _sec(3, 100, 0, {B20 + 30: 100}), plans)
    b = advance(state, _sec(3, 10, 0, {B20: 10}), _sec(3, 100, 0, {B20 - 5: 50, B20: 50}), plans)
    assert a.monitors["vs/latency_p50"].above_ms == b.monitors["vs/latency_p50"].above_ms == split_before
    assert split_before == (histogram.upper_ms(B20 - 5), histogram.lower_ms(B20 - 5 + 3))


def test_the_latency_margin_raises_the_canary_threshold() -> None:
    """Sub-margin differences never count: the canary threshold is at least stable's split + margin."""
    plans = plans_for([("vs", CompareToStableMetric(error_rate=False, latency_margin=0.005))], 0.05)
    state = SequentialState()
    for t in range(4):
        state = advance(state, _sec(t, 10, 0, {B20: 10}), _sec(t, 100, 0, {B20 - 5: 50, B20: 50}), plans)
    stable_split, canary_above = state.monitors["vs/latency_p50"].above_ms
    assert canary_above >= stable_split + 5.0
    assert canary_above <= (stable_split + 5.0) * 2 ** (1 / 8) * 1.0001      # rounded up by at most a bucket


def test_alpha_is_split_over_every_monitor_of_the_spec() -> None:
    spec = AnalysisSpec.model_validate({"alpha": 0.01, "metrics": [
        {"name": "a", "compare_to_stable": {"tolerance": 0.2}},
        {"name": "b", "compare_to_stable": {"latency": False}},
        {"name": "ok", "success_rate": {"min": 0.99}}]})
    plans = plans_of(spec)
    assert [p.key for p in plans] == ["a/error_rate", "a/latency_p50", "a/latency_p90", "b/error_rate"]
    assert [p.bar for p in plans] == pytest.approx([400.0] * 4)
    assert plans[0].tolerance == 0.2 and plans[3].tolerance == 0.1


def test_a_changed_tolerance_starts_the_monitor_afresh() -> None:
    state, _ = update(None, _sec(100, 10, 3), _sec(100, 190, 0), tolerance=0.1)
    fresh, verdicts = update(state, _sec(101, 10, 0), _sec(101, 190, 1), tolerance=0.5)
    assert verdicts[0].status == "inconclusive"
    assert fresh.monitors["vs-stable/error_rate"].tolerance == 0.5


def test_epochs_start_every_minute_and_old_ones_are_dropped() -> None:
    plans = plans_for([("vs", CompareToStableMetric(latency=False))], 0.05)
    state = SequentialState()
    for t in range(0, 40 * mg.EPOCH_S, 20):
        state = advance(state, _sec(t, 10, 0), _sec(t, 190, 1), plans)
    m = state.monitors["vs/error_rate"]
    indices = [e.index for e in m.epochs]
    assert len(indices) == mg.MAX_EPOCHS
    assert indices == [1, *range(40 - mg.MAX_EPOCHS + 2, 41)]
    assert m.epochs[0].canary_n == 10 * 120 and m.epochs[-1].start == 39 * mg.EPOCH_S
    assert sum(math.exp(mg.log_weight(k)) for k in range(1, 10_000)) == pytest.approx(1.0, abs=1e-3)
