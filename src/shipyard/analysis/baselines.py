"""The rules we are measured against, on the same input as our sequential test.

Each takes the rollout's seconds as (canary, stable) pairs in time order and says
what it would have decided and at which second, so a benchmark can put detection
time and false-abort rate side by side:
- `flagger_rule`: Flagger's built-in request-success-rate check: every `interval`
  seconds the canary's success rate over the last interval is compared with a
  minimum (99 %); each miss is a failed check, and the canary is rolled back when
  failed checks reach `threshold` (5). Intervals without canary traffic are
  skipped, as Flagger halts on "no values found" without counting a failure.
- `fixed_horizon`: a Kayenta-like one-shot comparison at a horizon chosen in
  advance: Fisher's test on errors and Mann-Whitney on latency (`compare.py`),
  each at alpha/2, over everything up to the horizon.
- `sequential_rule`: ours (`sequential.py`), reading its verdict every second."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from shipyard.spec.strategy import CompareToStableMetric

from . import compare, sequential
from .series import Second, Window
from .verdict import Status, pct

Pairs = Sequence[tuple[Second, Second]]


class Decision(NamedTuple):
    status: Status
    """failed (roll back), successful (promote) or inconclusive (the series ended first)."""
    t: int | None
    """The second the decision was taken (the last second it read), None for an empty series."""
    detail: str


def _ordered(pairs: Pairs) -> list[tuple[Second, Second]]:
    out = sorted(pairs, key=lambda pair: pair[0].t)
    for c, s in out:
        if c.t != s.t:
            raise ValueError(f"canary second {c.t} paired with stable second {s.t}")
    return out


def flagger_rule(pairs: Pairs, *, interval: int = 60, threshold: int = 5, min_success: float = 0.99) -> Decision:
    """Flagger-style success-rate checks; failed when `threshold` checks have failed."""
    seq = _ordered(pairs)
    if not seq:
        return Decision("inconclusive", None, "no data")
    start, end = seq[0][0].t, seq[-1][0].t
    failed_checks, checks = 0, 0
    i = 0
    check_at = start + interval - 1
    while check_at <= end:
        window: list[Second] = []
        while i < len(seq) and seq[i][0].t <= check_at:
            window.append(seq[i][0])
            i += 1
        w = Window.of(window)
        if w.requests:
            checks += 1
            success = 1 - w.errors / w.requests
            if success < min_success:
                failed_checks += 1
                if failed_checks >= threshold:
                    return Decision("failed", check_at,
                                    f"{failed_checks} failed checks (last: success rate {pct(success)} "
                                    f"< {pct(min_success)} over {interval}s) >= threshold {threshold}")
        check_at += interval
    return Decision("successful", end, f"{failed_checks} of {checks} checks failed (< threshold {threshold})")


def fixed_horizon(pairs: Pairs, *, horizon: int = 300, tolerance: float = 0.1, alpha: float = 0.05,
                  min_requests: int = 50, error_rate: bool = True, latency: bool = True) -> Decision:
    """One comparison with stable over the first `horizon` seconds, decided at the horizon."""
    seq = _ordered(pairs)
    if not seq:
        return Decision("inconclusive", None, "no data")
    start = seq[0][0].t
    last = start + horizon - 1
    used = [pair for pair in seq if pair[0].t <= last]
    if seq[-1][0].t < last:
        return Decision("inconclusive", seq[-1][0].t, f"the series ends before the {horizon}s horizon")
    canary, stable = Window.of(c for c, _ in used), Window.of(s for _, s in used)
    tests = int(error_rate) + int(latency)
    level = alpha / max(tests, 1)
    verdicts = []
    if error_rate:
        verdicts.append(compare.error_rate_vs_stable("fixed", canary, stable, tolerance, level, min_requests))
    if latency:
        verdicts.append(compare.latency_vs_stable("fixed", canary, stable, tolerance, level, min_requests))
    failed = [v for v in verdicts if v.status == "failed"]
    if failed:
        return Decision("failed", last, failed[0].detail)
    if any(v.status == "inconclusive" for v in verdicts):
        return Decision("inconclusive", last, "; ".join(v.detail for v in verdicts))
    return Decision("successful", last, "; ".join(v.detail for v in verdicts))


def sequential_rule(pairs: Pairs, *, tolerance: float = 0.1, alpha: float = 0.05, error_rate: bool = True,
                    latency: bool = True) -> Decision:
    """Our anytime-valid monitors, read after every second: failed at the first crossing."""
    seq = _ordered(pairs)
    if not seq:
        return Decision("inconclusive", None, "no data")
    check = CompareToStableMetric(error_rate=error_rate, latency=latency, tolerance=float(tolerance))
    plans = sequential.plans_for([("vs-stable", check)], alpha)
    state = sequential.SequentialState()
    for c, s in seq:
        state = sequential.advance(state, c, s, plans)
        for p in plans:
            if state.monitors[p.key].crossed is not None:
                return Decision("failed", c.t, sequential.verdict(state, p).detail)
    return Decision("successful", seq[-1][0].t, "no monitor reached its bar")
