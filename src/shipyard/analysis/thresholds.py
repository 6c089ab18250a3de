"""Fixed thresholds on the canary alone: success rate and a latency quantile.

These are rules the user wrote, not statistical tests: they hold the canary to an
absolute bar whatever stable does. The only statistics here is `min_requests`:
below it there is no verdict, because a rate over a handful of requests says
nothing (one error in 20 requests is a 95 % success rate)."""

from __future__ import annotations

import math

from shipyard import histogram

from .series import Window
from .verdict import Verdict, ms, pct


def _too_little(metric: str, kind: str, samples: int, min_requests: int, what: str,
                threshold: float | None) -> Verdict:
    return Verdict(metric=metric, kind=kind, status="inconclusive", value=None, threshold=threshold,
                   samples=samples,
                   detail=f"only {samples} canary {what} so far; need {min_requests} (min_requests) to judge",
                   evidence={"samples": samples, "min_requests": min_requests})


def success_rate(metric: str, minimum: float, canary: Window, min_requests: int) -> Verdict:
    """Fails when the canary's share of successful requests is below `minimum`."""
    kind = "success_rate"
    if canary.requests < min_requests:
        return _too_little(metric, kind, canary.requests, min_requests, "requests", minimum)
    ok = canary.requests - canary.errors
    value = ok / canary.requests
    failed = value < minimum
    detail = (f"canary success rate {pct(value)} ({ok}/{canary.requests}) "
              f"{'<' if failed else '>='} min {pct(minimum)}")
    return Verdict(metric=metric, kind=kind, status="failed" if failed else "successful", value=value,
                   threshold=minimum, samples=canary.requests, detail=detail,
                   evidence={"requests": canary.requests, "errors": canary.errors, "seconds": canary.seconds})


def _pname(q: float) -> str:
    return f"p{100 * q:g}"


def latency(metric: str, quantile: float, max_ms: float, canary: Window, min_requests: int) -> Verdict:
    """Fails when the canary's latency at `quantile` exceeds `max_ms`.

    The histogram gives the quantile's bucket, so the value is that bucket's upper
    bound: the true quantile is at most it and at least the bucket's lower bound
    (9 % lower). We judge on the upper bound, so a pass is certain and a failure may
    be within one bucket width of the limit; the detail says which case it is."""
    kind = "latency"
    n = canary.latency_count
    if n < min_requests:
        return _too_little(metric, kind, n, min_requests, "latency samples", max_ms)
    upper = canary.quantile_ms(quantile)
    assert upper is not None  # n >= min_requests >= 1
    bucket = histogram.COUNT if math.isinf(upper) else histogram.bucket_of(upper)
    lower = histogram.lower_ms(bucket)
    failed = upper > max_ms
    name = _pname(quantile)
    if not failed:
        detail = f"canary {name} <= {ms(upper)} (upper bound of its histogram bucket; n={n}) <= max {ms(max_ms)}"
    elif lower >= max_ms:
        detail = f"canary {name} > {ms(lower)} (lower bound of its histogram bucket; n={n}) > max {ms(max_ms)}"
    else:
        detail = (f"canary {name} is in ({ms(lower)}, {ms(upper)}] (n={n}), a histogram bucket that straddles "
                  f"max {ms(max_ms)}; judged on its upper bound {ms(upper)} > max")
    return Verdict(metric=metric, kind=kind, status="failed" if failed else "successful", value=upper,
                   threshold=max_ms, samples=n, detail=detail,
                   evidence={"quantile": quantile, "bucket": bucket, "lower_ms": lower,
                             "upper_ms": upper if math.isfinite(upper) else None,
                             "latency_samples": n, "seconds": canary.seconds})
