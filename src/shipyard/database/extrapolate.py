"""Carrying a lock-holding time measured on two sample sizes to the live table's size. A
rehearsal on a 100,000-row sample of a 10-million-row table holds its locks a hundredth of
the time production will; two sizes give the fixed cost and the per-row cost, and the
model (linear for a scan or rewrite, n log n for a sort such as an index build) carries
them to the live size. Pure: no database here."""

from __future__ import annotations

import math
from dataclasses import dataclass

LINEAR = "linear"
NLOGN = "n log n"
CONSTANT = "constant"
MODELS = (LINEAR, NLOGN)

NOISE_FLOOR = 0.005
"""Seconds: a time that grows less than this between the samples does not grow with the
table (a catalog-only change); timing noise would make any fit of it meaningless."""


@dataclass(frozen=True)
class Fit:
    model: str
    """LINEAR, NLOGN, or CONSTANT when the time did not grow with the sample."""
    seconds: float
    """The estimate at the target size."""
    fixed: float
    """The fitted cost that does not depend on size (seconds)."""

    def to_dict(self) -> dict[str, float | str]:
        return {"model": self.model, "seconds": self.seconds, "fixed": self.fixed}


def _g(model: str, n: float) -> float:
    if model == LINEAR:
        return n
    return n * math.log(max(n, 2.0))


def extrapolate(n1: int, t1: float, n2: int, t2: float, target: float, model: str) -> Fit:
    """Fit t = a + b * g(n) through (n1, t1) and (n2, t2), n1 < n2, and evaluate it at
    `target`. Bounds: never below the larger measured time (a table does not get faster as
    it grows); a fixed cost is never negative (a fit that needs one scales the larger sample
    through the origin instead: the small sample's time is mostly noise then); a time that did not grow by NOISE_FLOOR is taken as constant; a target no
    bigger than n2 was measured, not estimated, and gets t2."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: one of {', '.join(MODELS)}")
    if not 0 < n1 < n2:
        raise ValueError(f"need two sample sizes 0 < n1 < n2, got {n1} and {n2}")
    if min(t1, t2) < 0 or target <= 0:
        raise ValueError("times must be >= 0 and the target size > 0")
    measured = max(t1, t2)
    if target <= n2:
        return Fit(CONSTANT, t2, t2)
    if t2 - t1 < NOISE_FLOOR:
        return Fit(CONSTANT, measured, measured)
    g1, g2 = _g(model, n1), _g(model, n2)
    slope = (t2 - t1) / (g2 - g1)
    fixed = t1 - slope * g1
    if fixed < 0:               # grew faster than the model between the samples: noise, not a negative cost
        fixed, slope = 0.0, t2 / g2
    return Fit(model, round(max(measured, fixed + slope * _g(model, target)), 4), round(fixed, 4))


def effective_rows(live_rows: int, live_bytes: int, sample_rows: int, sample_bytes: int) -> int:
    """The live table's size in sample rows: its row count, or more when its rows are wider
    than the sample's (bytes / the sample's bytes per row), since the work of a scan, a
    rewrite or a sort grows with the bytes too."""
    if sample_rows <= 0 or sample_bytes <= 0 or live_bytes <= 0:
        return max(live_rows, 0)
    return max(live_rows, round(live_bytes * sample_rows / sample_bytes))
