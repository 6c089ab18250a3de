"""The shared latency bucket scheme."""

from __future__ import annotations

import random

from shipyard.histogram import BOUNDS_MS, COUNT, bucket_of, lower_ms, merge, quantile_ms, upper_ms


def test_every_latency_falls_inside_its_bucket() -> None:
    rnd = random.Random(7)
    for _ in range(20000):
        ms = 10 ** rnd.uniform(-2, 5.2)
        i = bucket_of(ms)
        assert lower_ms(i) < ms <= upper_ms(i) or (i == 0 and ms <= BOUNDS_MS[0])


def test_bounds_are_their_own_bucket_and_about_nine_percent_apart() -> None:
    for i, b in enumerate(BOUNDS_MS):
        assert bucket_of(b) == i
    ratios = {round(BOUNDS_MS[i + 1] / BOUNDS_MS[i], 6) for i in range(COUNT - 1)}
    assert ratios == {round(2 ** (1 / 8), 6)}
    assert bucket_of(10 ** 9) == COUNT and bucket_of(float("inf")) == COUNT


def test_quantile_is_an_upper_bound_within_one_bucket() -> None:
    rnd = random.Random(3)
    samples = [rnd.lognormvariate(3, 0.6) for _ in range(5000)]
    counts = merge([{bucket_of(s): 1} for s in samples])
    exact = sorted(samples)[int(0.99 * len(samples)) - 1]
    est = quantile_ms(counts, 0.99)
    assert est is not None and exact <= est <= exact * 2 ** (1 / 8) * 1.0001
    assert quantile_ms({}, 0.5) is None
