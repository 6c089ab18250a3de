"""The latency bucket scheme shared by the router (which counts) and the analysis (which
judges): log-scale buckets, 8 per doubling (each ~9 % wide), from 50 µs to past 60 s.

Fine enough for p50-p99.9 and for a relative tolerance of 10 %; sparse, so a second
with few distinct latencies costs a few integers. One definition, so producer and
consumer can never disagree about what bucket 57 means."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

BASE_MS = 0.05
PER_DOUBLING = 8
COUNT = 8 * 21              # 0.05 ms * 2**21 ≈ 105 s: the last finite bound
BOUNDS_MS: tuple[float, ...] = tuple(BASE_MS * 2 ** (i / PER_DOUBLING) for i in range(COUNT))
"""Upper bound (inclusive) of bucket i in milliseconds; bucket COUNT holds the rest."""


def bucket_of(ms: float) -> int:
    """Index of the bucket a latency falls in (0..COUNT)."""
    if ms <= BASE_MS:
        return 0
    if ms > BOUNDS_MS[-1]:          # includes inf: the overflow bucket
        return COUNT
    i = math.ceil(math.log2(ms / BASE_MS) * PER_DOUBLING - 1e-9)
    return min(i, COUNT)


def upper_ms(i: int) -> float:
    return BOUNDS_MS[i] if i < COUNT else math.inf


def lower_ms(i: int) -> float:
    return 0.0 if i == 0 else BOUNDS_MS[i - 1]


def first_bucket_above(ms: float) -> int:
    """The first bucket whose lower bound is >= ms (for conservative thresholds)."""
    return bisect.bisect_left(BOUNDS_MS, ms) + 1 if ms > 0 else 0


def merge(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in parts:
        for k, v in p.items():
            out[int(k)] = out.get(int(k), 0) + int(v)
    return out


def quantile_ms(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) as the upper bound of the bucket that holds it
    (an over-estimate by at most one bucket width), or None without data."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= rank:
            return upper_ms(i)
    return upper_ms(max(counts))
