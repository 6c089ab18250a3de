"""Continuous, anytime-valid monitoring of the canary against stable, second by second.

A rollout feeds every second of both tracks here; each monitor keeps a test
martingale (see `martingale.py`) and fails the canary the first time its
e-value reaches 1/alpha_i. Because P(a good canary's e-value EVER reaches
1/alpha_i) <= alpha_i, the rollout may read the verdict every second, forever,
and the chance of rolling back a release as good as stable stays within alpha.

Monitors, per `compare_to_stable` metric:
- error_rate: the event is an error; null "canary rate <= (1 + tolerance) x stable's".
- latency_p50 / latency_p90: the event is "slow": a stable request is slow above
  stable's running median (p90) up to the previous second, a canary request above
  (1 + tolerance) x that, rounded up to a bucket bound. Null: canary latency is at
  most (1 + tolerance) x stable's in distribution, so a canary request is at most
  as likely to be slow as a stable one.
All monitors of a spec share its alpha equally (Bonferroni): each fails at
e-value >= k / alpha, so the chance that ANY of the k fails a good canary is <= alpha.

The state is plain data (to_dict / from_dict) so a rollout resumes after a daemon
restart with its evidence intact; seconds already seen are ignored on replay."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shipyard.spec.strategy import AnalysisSpec, CompareToStableMetric

from . import martingale as mg
from .series import Second
from .verdict import Status, Verdict, ms, num, rate

KINDS = ("error_rate", *mg.SPLITS)
STATE_VERSION = 1
E_CAP = 1e300
"""e-values are reported up to this (beyond, exp overflows; the verdict is long decided)."""


def e_value(log_e: float) -> float:
    return E_CAP if log_e >= math.log(E_CAP) else math.exp(log_e)


@dataclass(frozen=True)
class MonitorPlan:
    """One martingale a spec asks for, with its share of alpha."""

    metric: str
    kind: str
    tolerance: float
    alpha: float
    """The whole spec's alpha."""
    share: int
    """How many monitors split it (Bonferroni): this one fails at e >= share / alpha."""
    margin_ms: float = 0.0
    """Latency: slower by at most this much never counts (see CompareToStableMetric.latency_margin)."""

    @property
    def key(self) -> str:
        return f"{self.metric}/{self.kind}"

    @property
    def bar(self) -> float:
        """The e-value at which this monitor fails the canary."""
        return self.share / self.alpha


def plans_for(metrics: Sequence[tuple[str, CompareToStableMetric]], alpha: float) -> list[MonitorPlan]:
    """All sequential monitors of these comparisons, splitting alpha equally among them."""
    chosen = [(name, kind, check) for name, check in metrics
              for kind in KINDS if getattr(check, "error_rate" if kind == "error_rate" else "latency")]
    return [MonitorPlan(metric=m, kind=k, tolerance=c.tolerance, alpha=alpha, share=len(chosen),
                        margin_ms=c.latency_margin * 1000) for m, k, c in chosen]


def plans_of(spec: AnalysisSpec) -> list[MonitorPlan]:
    pairs = [(m.name, m.compare_to_stable) for m in spec.metrics if m.compare_to_stable is not None]
    return plans_for(pairs, spec.alpha)


@dataclass(frozen=True)
class Epoch:
    """One copy of a monitor's martingale, started at `start` (see martingale.EPOCH_S)."""

    index: int
    """k >= 1: the copy started in the k-th EPOCH_S seconds of the monitor; prior weight 1/(k(k+1))."""
    start: int
    log_e: tuple[float, ...] = tuple(0.0 for _ in mg.GRID)
    """log of each grid component; this copy's e-value is their mean."""
    canary_n: int = 0
    canary_x: int = 0
    stable_n: int = 0
    stable_x: int = 0

    def counts(self) -> dict[str, int]:
        return {"since": self.start, "canary_n": self.canary_n, "canary_x": self.canary_x,
                "stable_n": self.stable_n, "stable_x": self.stable_x}

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "log_e": list(self.log_e), **self.counts()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Epoch:
        log_e = tuple(float(x) for x in data["log_e"])
        if len(log_e) != len(mg.GRID):
            raise ValueError(f"monitor state has {len(log_e)} grid components, expected {len(mg.GRID)}")
        return cls(index=int(data["index"]), start=int(data["since"]), log_e=log_e,
                   canary_n=int(data["canary_n"]), canary_x=int(data["canary_x"]),
                   stable_n=int(data["stable_n"]), stable_x=int(data["stable_x"]))


@dataclass(frozen=True)
class MonitorState:
    """One monitor's evidence so far."""

    kind: str
    tolerance: float
    origin: int | None = None
    """The first second fed to this monitor: epochs count from it."""
    epochs: tuple[Epoch, ...] = ()
    """The first epoch (evidence since the origin) and the most recent ones."""
    seconds: int = 0
    """Seconds that carried information (requests on both sides, a latency split)."""
    peak: float = 0.0
    """Highest log e-value reached."""
    above_ms: tuple[float, float] | None = None
    """Latency monitors: the latest (stable, canary) slow thresholds."""
    crossed: Mapping[str, Any] | None = None
    """The evidence at the second the e-value first reached the bar; sticky."""

    @property
    def log_value(self) -> float:
        if not self.epochs:
            return 0.0
        return float(mg.combine(np.array([e.log_e for e in self.epochs]), [e.index for e in self.epochs]))

    def totals(self) -> dict[str, int]:
        """Counts since the origin (the first epoch is never dropped)."""
        return self.epochs[0].counts() if self.epochs else {
            "since": self.origin or 0, "canary_n": 0, "canary_x": 0, "stable_n": 0, "stable_x": 0}

    def strongest(self) -> Epoch | None:
        """The epoch carrying the most weighted evidence: its counts explain the e-value best."""
        if not self.epochs:
            return None
        return max(self.epochs, key=lambda e: float(mg.mixture(np.array(e.log_e))) + mg.log_weight(e.index))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tolerance": self.tolerance, "origin": self.origin,
                "epochs": [e.to_dict() for e in self.epochs], "seconds": self.seconds, "peak": self.peak,
                "above_ms": list(self.above_ms) if self.above_ms else None,
                "crossed": dict(self.crossed) if self.crossed else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorState:
        above = data.get("above_ms")
        origin = data.get("origin")
        return cls(kind=str(data["kind"]), tolerance=float(data["tolerance"]),
                   origin=None if origin is None else int(origin),
                   epochs=tuple(Epoch.from_dict(e) for e in data.get("epochs") or ()),
                   seconds=int(data["seconds"]), peak=float(data["peak"]),
                   above_ms=(float(above[0]), float(above[1])) if above else None,
                   crossed=dict(data["crossed"]) if data.get("crossed") else None)


@dataclass(frozen=True)
class SequentialState:
    """Everything the monitors need to continue: evidence, stable's latency history, last second seen."""

    last_t: int | None = None
    history: Mapping[int, float] = field(default_factory=dict)
    """Stable's latency histogram up to last_t, fading with martingale.HALF_LIFE_S."""
    monitors: Mapping[str, MonitorState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "last_t": self.last_t,
                "history": {str(k): v for k, v in sorted(self.history.items())},
                "monitors": {k: m.to_dict() for k, m in self.monitors.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequentialState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"sequential state version {data.get('version')!r} is not {STATE_VERSION}")
        last = data.get("last_t")
        return cls(last_t=None if last is None else int(last),
                   history={int(k): float(v) for k, v in (data.get("history") or {}).items()},
                   monitors={k: MonitorState.from_dict(v) for k, v in (data.get("monitors") or {}).items()})


def _dense(latency: Mapping[int, float]) -> np.ndarray:
    out = np.zeros(mg.B)
    for k, v in latency.items():
        out[k] += v
    return out


def _tick(canary: Second, stable: Second) -> mg.Tick:
    def one(x: int) -> np.ndarray:
        return np.array([x], dtype=np.int64)
    return mg.Tick(canary_requests=one(canary.requests), canary_errors=one(canary.errors),
                   canary_latency=_dense(canary.latency)[None, :],
                   stable_requests=one(stable.requests), stable_errors=one(stable.errors),
                   stable_latency=_dense(stable.latency)[None, :])


def advance(state: SequentialState, canary: Second, stable: Second,
            plans: Sequence[MonitorPlan]) -> SequentialState:
    """Feed one second of both tracks to every planned monitor. Seconds at or before
    `last_t` are ignored, so re-feeding after a restart cannot count evidence twice."""
    if canary.t != stable.t:
        raise ValueError(f"canary second {canary.t} and stable second {stable.t} differ; pair seconds by t")
    if state.last_t is not None and canary.t <= state.last_t:
        return state
    tick = _tick(canary, stable)
    history = _dense(state.history)[None, :]
    history_cum = np.cumsum(history, axis=-1)
    monitors: dict[str, MonitorState] = {}
    for plan in plans:
        old = state.monitors.get(plan.key)
        if old is None or old.kind != plan.kind or old.tolerance != plan.tolerance:
            old = MonitorState(kind=plan.kind, tolerance=plan.tolerance)
        monitors[plan.key] = _step(old, plan, mg.monitor_counts(plan.kind, tick, history_cum, plan.tolerance, plan.margin_ms),
                                   canary.t)
    faded = mg.decay(canary.t - state.last_t) if state.last_t is not None else 0.0
    new_history = history[0] * faded + tick.stable_latency[0]
    kept = {i: float(v) for i, v in enumerate(new_history) if v > 0}
    return SequentialState(last_t=canary.t, history=kept, monitors=monitors)


def _step(m: MonitorState, plan: MonitorPlan, c: mg.Counts, t: int) -> MonitorState:
    if m.crossed is not None:
        return m   # the verdict is final; keep the evidence as it was when it was decided
    origin = t if m.origin is None else m.origin
    k = mg.epoch_index(t, origin)
    epochs = list(m.epochs)
    if not epochs or epochs[-1].index < k:
        epochs.append(Epoch(index=k, start=t))
    epochs = [e for e in epochs if mg.kept(e.index, k)]
    n_c, x_c, n_s, x_s = int(c.n_c[0]), int(c.x_c[0]), int(c.n_s[0]), int(c.x_s[0])
    if n_c + n_s == 0:
        return replace(m, origin=origin, epochs=tuple(epochs))
    factor = mg.log_factors(c.x_c, c.x_s, c.n_c, c.n_s, c.rho0)[0]
    epochs = [replace(e, log_e=tuple(float(x) for x in np.array(e.log_e) + factor),
                      canary_n=e.canary_n + n_c, canary_x=e.canary_x + x_c,
                      stable_n=e.stable_n + n_s, stable_x=e.stable_x + x_s) for e in epochs]
    above = m.above_ms
    if (c.stable_above_ms is not None and c.canary_above_ms is not None
            and math.isfinite(c.stable_above_ms[0]) and math.isfinite(c.canary_above_ms[0])):
        above = (float(c.stable_above_ms[0]), float(c.canary_above_ms[0]))
    new = replace(m, origin=origin, epochs=tuple(epochs), seconds=m.seconds + int(n_c > 0 and n_s > 0),
                  above_ms=above)
    value = new.log_value
    new = replace(new, peak=max(m.peak, value))
    if value >= math.log(plan.bar):
        best = new.strongest()
        assert best is not None
        new = replace(new, crossed={"t": t, "e_value": e_value(value), **best.counts(),
                                    "seconds": new.seconds, "above_ms": list(above) if above else None})
    return new


# -- verdicts ------------------------------------------------------------------------------------

def _what(plan: MonitorPlan, figures: Mapping[str, Any], origin: int | None) -> str:
    cn, cx, sn, sx = figures["canary_n"], figures["canary_x"], figures["stable_n"], figures["stable_x"]
    since = f" since t={figures['since']}" if origin is not None and figures["since"] != origin else ""
    if plan.kind == "error_rate":
        null = f"; null: canary <= {1 + plan.tolerance:g} x stable" if plan.tolerance else ""
        return f"canary error rate {rate(cx, cn)} vs stable {rate(sx, sn)}{since}{null}"
    q = f"p{100 * mg.SPLITS[plan.kind]:g}"
    above = figures.get("above_ms")
    if not above:
        return f"no split yet (stable's running {q} needs {mg.MIN_HISTORY:g} stable latency samples)"
    slack = f" or + {ms(plan.margin_ms)}" if plan.margin_ms else ""
    return (f"canary requests slower than {ms(above[1])} ({1 + plan.tolerance:g} x{slack} stable's running {q} "
            f"{ms(above[0])}, rounded up to a bucket bound): {rate(cx, cn)} vs stable slower than "
            f"{ms(above[0])}: {rate(sx, sn)}{since}")


def _bar(plan: MonitorPlan) -> str:
    if plan.share == 1:
        return f"1/alpha = {num(plan.bar)}"
    return f"{plan.share}/alpha = {num(plan.bar)} ({plan.share} monitors share alpha = {num(plan.alpha)})"


def verdict(state: SequentialState, plan: MonitorPlan, *, final: bool = False, min_requests: int = 0) -> Verdict:
    """The monitor's finding: failed once its e-value has reached the bar; at the end of a
    window (`final`) successful if it saw at least `min_requests` canary requests; else inconclusive."""
    m = state.monitors.get(plan.key) or MonitorState(kind=plan.kind, tolerance=plan.tolerance)
    kind = f"sequential_{plan.kind}"
    totals = m.totals()
    best = m.strongest()
    evidence: dict[str, Any] = {
        "e_value": e_value(m.log_value), "peak_e_value": e_value(m.peak), "bar": plan.bar, "alpha": plan.alpha,
        "monitors": plan.share, "tolerance": plan.tolerance, "totals": totals,
        "strongest_epoch": best.counts() if best else None, "epochs": len(m.epochs), "seconds": m.seconds,
        "above_ms": list(m.above_ms) if m.above_ms else None, "crossed": dict(m.crossed) if m.crossed else None}
    status: Status
    if m.crossed is not None:
        e = float(m.crossed["e_value"])
        detail = (f"{_what(plan, m.crossed, m.origin)}: sequential e-value {num(e)} >= {_bar(plan)} "
                  f"at t={m.crossed['t']}")
        return Verdict(metric=plan.metric, kind=kind, status="failed", value=e, threshold=plan.bar,
                       samples=int(m.crossed["canary_n"]), detail=detail, evidence=evidence)
    e = e_value(m.log_value)
    what = _what(plan, {**totals, "above_ms": m.above_ms}, m.origin)
    tail = f"sequential e-value {num(e)} < {_bar(plan)}"
    n = totals["canary_n"]
    if final and n >= max(min_requests, 1):
        status, detail = "successful", f"no regression detected: {what}; {tail}"
    elif final:
        status = "inconclusive"
        detail = f"only {n} canary requests reached this monitor; need {min_requests} (min_requests): {what}; {tail}"
    else:
        status, detail = "inconclusive", f"watching: {what}; {tail}"
    return Verdict(metric=plan.metric, kind=kind, status=status, value=e, threshold=plan.bar,
                   samples=n, detail=detail, evidence=evidence)


def update(state: SequentialState | None, canary: Second, stable: Second, tolerance: float = 0.1,
           alpha: float = 0.05, *, metric: str = "vs-stable", error_rate: bool = True, latency: bool = True,
           final: bool = False, min_requests: int = 0,
           latency_margin: float = 0.0) -> tuple[SequentialState, list[Verdict]]:
    """One second for one comparison (error rate and latency monitors sharing alpha)."""
    check = CompareToStableMetric(error_rate=error_rate, latency=latency, tolerance=float(tolerance),
                                  latency_margin=latency_margin)
    plans = plans_for([(metric, check)], alpha)
    new = advance(state or SequentialState(), canary, stable, plans)
    return new, [verdict(new, p, final=final, min_requests=min_requests) for p in plans]
