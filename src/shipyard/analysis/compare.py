"""Fixed-horizon comparison of the canary with stable over the same window.

Classical tests, valid for ONE look at a window fixed in advance (the end of an
analysis step, or a benchmark's horizon). Looking again and again at a growing
window with them inflates false alarms; `sequential.py` is the test for that.

- Error rate: Fisher's exact test, one-sided, conditional on the total number of
  errors. Chosen over a z-test because error counts are small (a 0.5 % error rate
  at 10 req/s gives a handful of errors a minute, where the normal approximation is
  poor) and over Boschloo's unconditional test because that one costs O(n^2) and
  cannot run on a million requests. The tolerance is folded into the null
  hypothesis: H0 is "canary's odds of error <= (1 + tolerance) x stable's", tested
  with Fisher's noncentral hypergeometric distribution (tolerance 0 gives the
  ordinary Fisher test). For error rates of a few percent the odds ratio and the
  rate ratio differ by those few percent.
- Latency: Mann-Whitney U computed from the two histograms directly (midranks per
  bucket, tie-corrected normal approximation, the same statistic and p-value as
  `scipy.stats.mannwhitneyu(..., method="asymptotic")` on the expanded samples, at
  O(buckets) memory instead of O(requests)), and the Hodges-Lehmann shift, the
  median of all canary-minus-stable differences, over bucket representatives."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from shipyard import histogram

from .series import Window
from .verdict import Verdict, ms, num, pct, rate

ERROR_RATE_FLOOR = 0.001
"""A canary fails the error-rate comparison only if its rate also exceeds
stable x (1 + tolerance) + 0.1 percentage point: when stable has (almost) no errors,
a relative tolerance alone would call one stray error a regression."""


def representative_ms(i: int) -> float:
    """One latency standing for bucket i: the geometric middle of its bounds (buckets are log-spaced)."""
    half = 2 ** (1 / (2 * histogram.PER_DOUBLING))
    if i <= 0:
        return histogram.BASE_MS / half
    if i >= histogram.COUNT:
        return histogram.BOUNDS_MS[-1] * half
    return histogram.BOUNDS_MS[i - 1] * half


def _arrays(counts: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(k for k, v in counts.items() if v > 0)
    values = np.array([representative_ms(k) for k in keys], dtype=float)
    weights = np.array([counts[k] for k in keys], dtype=float)
    return values, weights


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float | None:
    """Median of values repeated `weights` times (the mean of the two middle ones when they differ)."""
    total = float(weights.sum())
    if total <= 0:
        return None
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    i = int(np.searchsorted(cum, total / 2, side="left"))
    if cum[i] == total / 2 and i + 1 < len(v):
        return float((v[i] + v[i + 1]) / 2)
    return float(v[i])


def hodges_lehmann_ms(canary: Mapping[int, int], stable: Mapping[int, int]) -> float | None:
    """Median of canary - stable over all pairs of requests, each request at its bucket's representative."""
    cv, cw = _arrays(canary)
    sv, sw = _arrays(stable)
    if not len(cv) or not len(sv):
        return None
    return weighted_median(np.subtract.outer(cv, sv).ravel(), np.multiply.outer(cw, sw).ravel())


@dataclass(frozen=True)
class RankTest:
    u: float
    """Mann-Whitney U of the canary: pairs where canary is slower, plus half the ties."""
    z: float
    p: float
    """One-sided p-value for "canary is stochastically slower"."""


def mann_whitney(canary: Mapping[int, int], stable: Mapping[int, int]) -> RankTest:
    """Mann-Whitney U from two histograms, ties within a bucket; one-sided (canary slower)."""
    keys = sorted({k for k, v in canary.items() if v} | {k for k, v in stable.items() if v})
    c = [int(canary.get(k, 0)) for k in keys]
    s = [int(stable.get(k, 0)) for k in keys]
    n1, n2 = sum(c), sum(s)
    n = n1 + n2
    if n1 == 0 or n2 == 0:
        return RankTest(u=0.0, z=0.0, p=1.0)
    u2 = 0        # twice U, to stay in integers
    below = 0
    ties = 0
    for ci, si in zip(c, s, strict=True):
        u2 += ci * (2 * below + si)
        below += si
        t = ci + si
        ties += t * t * t - t
    u = u2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return RankTest(u=u, z=0.0, p=1.0)
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return RankTest(u=u, z=z, p=float(stats.norm.sf(z)))


def fisher_p(canary_errors: int, canary_requests: int, stable_errors: int, stable_requests: int,
             tolerance: float) -> float:
    """P(canary gets >= its errors | total errors) when its odds of error are (1+tolerance) x stable's."""
    total, errors = canary_requests + stable_requests, canary_errors + stable_errors
    if canary_errors == 0 or errors == 0:
        return 1.0
    if tolerance == 0:
        p = stats.hypergeom.sf(canary_errors - 1, total, canary_requests, errors)
    else:
        p = stats.nchypergeom_fisher.sf(canary_errors - 1, total, canary_requests, errors, 1 + tolerance)
    return float(min(1.0, max(0.0, p)))


def _too_little(metric: str, kind: str, n_canary: int, n_stable: int, min_requests: int,
                alpha: float, what: str) -> Verdict | None:
    if n_canary >= min_requests and n_stable >= min_requests:
        return None
    return Verdict(metric=metric, kind=kind, status="inconclusive", value=None, threshold=alpha,
                   samples=n_canary,
                   detail=f"{n_canary} canary and {n_stable} stable {what} so far; need {min_requests} "
                          f"of each (min_requests) to compare",
                   evidence={"canary": n_canary, "stable": n_stable, "min_requests": min_requests})


def error_rate_vs_stable(metric: str, canary: Window, stable: Window, tolerance: float, alpha: float,
                         min_requests: int) -> Verdict:
    """Fails if the canary's error rate is significantly above stable's beyond the tolerance."""
    kind = "error_rate_vs_stable"
    early = _too_little(metric, kind, canary.requests, stable.requests, min_requests, alpha, "requests")
    if early:
        return early
    rc, rs = canary.errors / canary.requests, stable.errors / stable.requests
    bound = rs * (1 + tolerance) + ERROR_RATE_FLOOR
    p = fisher_p(canary.errors, canary.requests, stable.errors, stable.requests, tolerance)
    significant, beyond = p < alpha, rc > bound
    failed = significant and beyond
    test = "one-sided Fisher exact" + (f" (H0: odds ratio <= {1 + tolerance:g})" if tolerance else "")
    head = f"canary error rate {rate(canary.errors, canary.requests)} vs stable {rate(stable.errors, stable.requests)}"
    margin = f"stable x {1 + tolerance:g} + {pct(ERROR_RATE_FLOOR)} floor = {pct(bound)}"
    if failed:
        detail = f"{head}: {test} p = {num(p)} < alpha = {num(alpha)} and {pct(rc)} > {margin}"
    elif significant:
        detail = f"{head}: {test} p = {num(p)} < alpha = {num(alpha)} but {pct(rc)} <= {margin}"
    else:
        detail = f"{head}: {test} p = {num(p)} >= alpha = {num(alpha)}"
    return Verdict(metric=metric, kind=kind, status="failed" if failed else "successful", value=p,
                   threshold=alpha, samples=canary.requests, detail=detail,
                   evidence={"canary_requests": canary.requests, "canary_errors": canary.errors,
                             "stable_requests": stable.requests, "stable_errors": stable.errors,
                             "p_value": p, "tolerance": tolerance, "floor": ERROR_RATE_FLOOR,
                             "bound": bound, "seconds": canary.seconds})


def latency_vs_stable(metric: str, canary: Window, stable: Window, tolerance: float, alpha: float,
                      min_requests: int, margin_ms: float = 0.0) -> Verdict:
    """Fails if the canary is significantly slower (Mann-Whitney) AND its Hodges-Lehmann shift
    exceeds tolerance x stable's median: significance alone would fail a canary 1 % slower
    once there are enough requests."""
    kind = "latency_vs_stable"
    n1, n2 = canary.latency_count, stable.latency_count
    early = _too_little(metric, kind, n1, n2, min_requests, alpha, "latency samples")
    if early:
        return early
    test = mann_whitney(canary.latency, stable.latency)
    shift = hodges_lehmann_ms(canary.latency, stable.latency)
    median = weighted_median(*_arrays(stable.latency))
    assert shift is not None and median is not None
    allowed = max(tolerance * median, margin_ms)
    significant, beyond = test.p < alpha, shift > allowed
    failed = significant and beyond
    head = (f"canary - stable latency shift {ms(shift)} (Hodges-Lehmann; stable median {ms(median)}, "
            f"n={n1} vs {n2}): one-sided Mann-Whitney p = {num(test.p)}")
    limit = (f"{ms(allowed)} ({tolerance:g} x stable median)" if tolerance * median >= margin_ms
             else f"{ms(allowed)} (the latency margin)")
    if failed:
        detail = f"{head} < alpha = {num(alpha)} and shift {ms(shift)} > {limit}"
    elif significant:
        detail = f"{head} < alpha = {num(alpha)} but shift {ms(shift)} <= {limit}"
    else:
        detail = f"{head} >= alpha = {num(alpha)}"
    return Verdict(metric=metric, kind=kind, status="failed" if failed else "successful", value=test.p,
                   threshold=alpha, samples=n1, detail=detail,
                   evidence={"u": test.u, "z": test.z, "p_value": test.p, "shift_ms": shift,
                             "stable_median_ms": median, "allowed_shift_ms": allowed, "tolerance": tolerance,
                             "canary_samples": n1, "stable_samples": n2, "seconds": canary.seconds})
