"""The arithmetic of the sequential test, over numpy arrays of any number of runs.

One rollout is one run; a simulation or a benchmark replay is many runs at once.
Both use these functions, so what the simulations measure is what production does.

Model (after Lindon, Sanden & Shirikian, "Rapid Regression Detection in Software
Deployments through Sequential Testing", KDD 2022). In second t, the canary serves
n_c requests and stable n_s; x_c and x_s of them have the event (an error, or
"slow"). Requests are independent given that second's conditions, with event
probabilities p_c(t) and p_s(t) that may change from second to second. For a
rate ratio rho, the per-second likelihood ratio of "p_c = rho p_s" against the
boundary of the null "p_c = rho0 p_s" is

    f_t(rho) = (theta/pi0)^x_c ((1-theta)/(1-pi0))^x_s,
    theta = rho n_c / (rho n_c + n_s),   pi0 = rho0 n_c / (rho0 n_c + n_s),

the conditional-binomial likelihood ratio of the canary's share of the events.
For every rho >= rho0 and every p_s, E[f_t(rho) | past, n_c, n_s] <= 1 whenever
p_c <= rho0 p_s: for Poisson counts it is exactly 1 at the boundary, for
binomial counts (1 + p(a - 1))^n <= exp(n p (a - 1)) makes it <= 1, and since
theta >= pi0 the factor on x_c is >= 1, so a smaller p_c only lowers it. So each
product over seconds is a nonnegative supermartingale under the null, and so is
any fixed-weight mixture of them over a grid of rho. Ville's inequality then
bounds P(the mixture ever reaches 1/alpha) by alpha, however often it is read."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from shipyard import histogram

B = histogram.COUNT + 1
"""Dense histogram width: buckets 0..COUNT."""

GRID: tuple[float, ...] = tuple(2 ** (j / 2) for j in range(1, 15))
"""Alternatives as multiples of the null's rate ratio rho0: 1.41x .. 128x, equal prior weight.
Large multiples give the seconds-fast detection of a broken canary; small ones
let long rollouts catch moderate regressions. Cost of the mixture: log(14) in
log-evidence compared with knowing the true ratio in advance."""
LOG_GRID = np.log(np.array(GRID))

SPLITS: dict[str, float] = {"latency_p50": 0.5, "latency_p90": 0.9}
"""Latency monitors: "slow" means above stable's running median, and above its p90.
The median catches a shift of the whole distribution, the p90 a slow tail."""

HALF_LIFE_S = 300.0
"""Stable's latency history (from which the split is read) forgets with this half-life,
so the split follows stable's latency when load changes it."""
MIN_HISTORY = 20.0
"""Stable latency observations needed before a split is read."""


def log_factors(x_c: np.ndarray, x_s: np.ndarray, n_c: np.ndarray, n_s: np.ndarray,
                rho0: float) -> np.ndarray:
    """log f_t(rho0 * g) for every g of GRID; shape (..., len(GRID)).

    log f = x_c log g - (x_c + x_s) log((rho n_c + n_s) / (rho0 n_c + n_s)); zero
    when a second has no requests on either side (nothing is learnt)."""
    x_c, x_s = np.asarray(x_c, float)[..., None], np.asarray(x_s, float)[..., None]
    n_c, n_s = np.asarray(n_c, float)[..., None], np.asarray(n_s, float)[..., None]
    rho = rho0 * np.exp(LOG_GRID)
    base = rho0 * n_c + n_s
    safe = np.where(base > 0, base, 1.0)
    out = x_c * LOG_GRID - (x_c + x_s) * np.log((rho * n_c + n_s + (base <= 0)) / safe)
    return np.where(base > 0, out, 0.0)


def mixture(log_e: np.ndarray) -> np.ndarray:
    """log of the equal-weight mixture over GRID (last axis)."""
    top = np.max(log_e, axis=-1, keepdims=True)
    return (top[..., 0] + np.log(np.mean(np.exp(log_e - top), axis=-1)))


# -- evidence that starts later: a mixture over start times --------------------------------------
# A martingale started at the rollout's first second carries all the good seconds
# before a canary turns bad (a leak, a cache expiring): its fast-detecting
# components have sunk so low that recovering takes minutes. So every EPOCH_S
# seconds a fresh copy starts, the k-th with prior weight 1/(k(k+1)) (they sum
# to 1). Before its start a copy is constant 1, so the weighted sum is still a test
# supermartingale; dropping old copies (setting them to 0) keeps it one. Cost: a
# regression starting in epoch k needs log(k(k+1)) more log-evidence.

EPOCH_S = 60
MAX_EPOCHS = 32
"""Copies kept: the first (evidence since the start) and the 31 most recent."""


def epoch_index(t: int, origin: int) -> int:
    """The copy that starts in second t: 1 for the first EPOCH_S seconds after `origin`, 2 next, ..."""
    return (t - origin) // EPOCH_S + 1


def log_weight(k: int) -> float:
    return -float(np.log(k * (k + 1.0)))


def kept(k: int, newest: int) -> bool:
    return k == 1 or k > newest - (MAX_EPOCHS - 1)


def combine(log_e: np.ndarray, indices: list[int]) -> np.ndarray:
    """log of the weighted sum over copies: log_e has shape (..., copies, GRID)."""
    weights = np.array([log_weight(k) for k in indices]) - np.log(len(GRID))
    per = (log_e + weights[:, None]).reshape(*log_e.shape[:-2], -1)
    top = np.max(per, axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.sum(np.exp(per - top), axis=-1))


# -- latency: a predictable split from stable's past ---------------------------------------------

def split_bucket(cum: np.ndarray, q: float) -> np.ndarray:
    """Bucket holding stable's q-quantile, from its cumulative latency history `cum` (R, B);
    -1 where there is too little history or the quantile is in the open last bucket."""
    total = cum[..., -1]
    idx = np.argmax(cum >= q * total[..., None] - 1e-9, axis=-1)
    ok = (total >= MIN_HISTORY) & (idx < histogram.COUNT)
    return np.where(ok, idx, -1)


def canary_start_table(tolerance: float, margin_ms: float = 0.0) -> np.ndarray:
    """For each split bucket b: the first bucket all of whose latencies exceed
    max((1+tol) x upper(b), upper(b) + margin), so a canary request is only counted slow
    when it surely is (histogram.first_bucket_above). Both are increasing in upper(b), so
    the null "canary <= that transform of stable, in distribution" keeps the test valid."""
    bounds = np.array(histogram.BOUNDS_MS)
    start = np.searchsorted(bounds, np.maximum((1 + tolerance) * bounds, bounds + margin_ms), side="left") + 1
    return np.append(start, B).astype(np.int64)


def count_from(cum: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per run, the sum of hist[r, start[r]:] given cum = cumsum(hist) (0 when start >= B)."""
    before = np.take_along_axis(cum, np.clip(start - 1, 0, B - 1)[..., None], axis=-1)[..., 0]
    return np.where(start > 0, cum[..., -1] - before, cum[..., -1])


def upper_ms(bucket: np.ndarray) -> np.ndarray:
    bounds = np.append(np.array(histogram.BOUNDS_MS), np.inf)
    return bounds[np.clip(bucket, 0, B - 1)]


# -- one second of both tracks, for R runs -------------------------------------------------------

@dataclass(frozen=True)
class Tick:
    """Both tracks' counts in one second, for R runs (arrays of shape (R,) and (R, B))."""

    canary_requests: np.ndarray
    canary_errors: np.ndarray
    canary_latency: np.ndarray
    stable_requests: np.ndarray
    stable_errors: np.ndarray
    stable_latency: np.ndarray

    @cached_property
    def canary_cum(self) -> np.ndarray:
        return np.cumsum(self.canary_latency, axis=-1)

    @cached_property
    def stable_cum(self) -> np.ndarray:
        return np.cumsum(self.stable_latency, axis=-1)


@dataclass(frozen=True)
class Counts:
    """What one monitor sees in one second: trials and events on each side, and the null's ratio."""

    n_c: np.ndarray
    x_c: np.ndarray
    n_s: np.ndarray
    x_s: np.ndarray
    rho0: float
    stable_above_ms: np.ndarray | None = None
    """Latency monitors: stable requests above this are slow (nan: no split this second)."""
    canary_above_ms: np.ndarray | None = None
    """... and canary requests above this (>= (1 + tolerance) x the stable split)."""


def monitor_counts(kind: str, tick: Tick, history_cum: np.ndarray, tolerance: float,
                   margin_ms: float = 0.0) -> Counts:
    """The events of monitor `kind` ("error_rate" or a key of SPLITS) in this tick; the latency
    split comes from `history_cum`, the cumulative sum of stable's latency history before it."""
    if kind == "error_rate":
        return Counts(n_c=tick.canary_requests, x_c=tick.canary_errors, n_s=tick.stable_requests,
                      x_s=tick.stable_errors, rho0=1 + tolerance)
    split = split_bucket(history_cum, SPLITS[kind])
    ok = split >= 0
    start_c = canary_start_table(tolerance, margin_ms)[np.where(ok, split, 0)]
    zero = np.zeros_like(split)
    return Counts(
        n_c=np.where(ok, tick.canary_cum[..., -1], zero),
        x_c=np.where(ok, count_from(tick.canary_cum, start_c), zero),
        n_s=np.where(ok, tick.stable_cum[..., -1], zero),
        x_s=np.where(ok, count_from(tick.stable_cum, split + 1), zero),
        rho0=1.0,
        stable_above_ms=np.where(ok, upper_ms(split), np.nan),
        canary_above_ms=np.where(ok, upper_ms(start_c - 1), np.nan),
    )


def decay(seconds: float) -> float:
    """Weight kept by stable's latency history after `seconds`."""
    return float(2 ** (-max(seconds, 0.0) / HALF_LIFE_S))
