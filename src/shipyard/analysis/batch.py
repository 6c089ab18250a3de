"""The sequential monitors over many independent runs at once, for simulations and replays.

Same arithmetic as `sequential.advance` (both call `martingale`), vectorised over a
leading run axis, so measuring false-alarm rates over hundreds of simulated
rollouts takes seconds. It keeps only what a measurement needs: when each
monitor of each run first reached its bar."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import martingale as mg
from .sequential import MonitorPlan
from .series import Second


def tick_of(pairs: Sequence[tuple[Second, Second]]) -> mg.Tick:
    """One second of R recorded runs, (canary, stable) per run, as the arrays `step` reads."""
    def dense(second: Second) -> np.ndarray:
        out = np.zeros(mg.B, dtype=np.int64)
        for k, v in second.latency.items():
            out[k] = v
        return out
    return mg.Tick(
        canary_requests=np.array([c.requests for c, _ in pairs], dtype=np.int64),
        canary_errors=np.array([c.errors for c, _ in pairs], dtype=np.int64),
        canary_latency=np.array([dense(c) for c, _ in pairs]).reshape(len(pairs), mg.B),
        stable_requests=np.array([s.requests for _, s in pairs], dtype=np.int64),
        stable_errors=np.array([s.errors for _, s in pairs], dtype=np.int64),
        stable_latency=np.array([dense(s) for _, s in pairs]).reshape(len(pairs), mg.B))


class BatchMonitors:
    """Test martingales for R runs of the same plans; feed one second at a time with `step`."""

    def __init__(self, runs: int, plans: Sequence[MonitorPlan]) -> None:
        self.runs = runs
        self.plans = list(plans)
        self.epochs: list[int] = []
        """Indices of the epochs kept (the same for every run: epochs count from the first second)."""
        self.log_e = {p.key: np.zeros((runs, 0, len(mg.GRID))) for p in self.plans}
        """Per monitor: (runs, epochs, grid) log-martingales."""
        self.origin: int | None = None
        self.crossed_at = {p.key: np.full(runs, -1, dtype=np.int64) for p in self.plans}
        """Per monitor and run: the first second whose e-value reached the bar, or -1."""
        self.crossed_log_e = {p.key: np.zeros(runs) for p in self.plans}
        """... and the log e-value then (the evidence stays as it was when it was decided)."""
        self.history = np.zeros((runs, mg.B))
        self.last_t: int | None = None

    def step(self, t: int, tick: mg.Tick) -> None:
        """Feed second t (seconds must increase) of every run."""
        if self.last_t is not None and t <= self.last_t:
            raise ValueError(f"second {t} does not follow {self.last_t}")
        self.origin = t if self.origin is None else self.origin
        k = mg.epoch_index(t, self.origin)
        if not self.epochs or self.epochs[-1] < k:
            self.epochs.append(k)
            for key, arr in self.log_e.items():
                self.log_e[key] = np.concatenate([arr, np.zeros((self.runs, 1, len(mg.GRID)))], axis=1)
        keep = [i for i, e in enumerate(self.epochs) if mg.kept(e, k)]
        if len(keep) < len(self.epochs):
            self.epochs = [self.epochs[i] for i in keep]
            self.log_e = {key: arr[:, keep] for key, arr in self.log_e.items()}
        history_cum = np.cumsum(self.history, axis=-1)
        for p in self.plans:
            counts = mg.monitor_counts(p.kind, tick, history_cum, p.tolerance, p.margin_ms)
            open_ = self.crossed_at[p.key] < 0
            factor = mg.log_factors(counts.x_c, counts.x_s, counts.n_c, counts.n_s, counts.rho0)
            self.log_e[p.key] += np.where(open_[:, None], factor, 0.0)[:, None, :]
            value = mg.combine(self.log_e[p.key], self.epochs)
            hit = open_ & (value >= np.log(p.bar))
            self.crossed_at[p.key][hit] = t
            self.crossed_log_e[p.key][hit] = value[hit]
        faded = mg.decay(t - self.last_t) if self.last_t is not None else 0.0
        self.history = self.history * faded + tick.stable_latency
        self.last_t = t

    def first_failure(self) -> np.ndarray:
        """Per run: the first second any monitor failed the canary, or -1."""
        times = np.stack([self.crossed_at[p.key] for p in self.plans])
        masked = np.where(times >= 0, times, np.iinfo(np.int64).max)
        first = masked.min(axis=0)
        return np.where(first == np.iinfo(np.int64).max, -1, first)

    def e_values(self, key: str) -> np.ndarray:
        """Current e-value of monitor `key` in every run (the value at the crossing for failed runs)."""
        value = np.where(self.crossed_at[key] >= 0, self.crossed_log_e[key], mg.combine(self.log_e[key], self.epochs))
        with np.errstate(over="ignore"):
            return np.exp(value)
