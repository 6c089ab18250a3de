"""Per-track metrics: bucket boundaries and the snapshot the controller reads."""

from __future__ import annotations

import bisect
import math
import random

from shipyard.histogram import BOUNDS_MS, bucket_of, lower_ms, upper_ms
from shipyard.router.dataplane.metrics import (
    LATENCY_BUCKETS_MS,
    SERIES_SECONDS,
    TrackMetrics,
    UpstreamMetrics,
)


def test_latency_lands_in_the_first_bucket_whose_bound_is_not_smaller() -> None:
    m = TrackMetrics()
    for ms in (0.2, 1.0, 1.01, 10.0, 10000.0, 10000.5, 99999.0):
        m.observe(200, ms)
    counts = dict(zip([*LATENCY_BUCKETS_MS, "+inf"], m.snapshot()["latency"]["counts"], strict=True))
    assert counts[1] == 2  # 0.2 and exactly 1.0
    assert counts[2] == 1  # 1.01
    assert counts[10] == 1
    assert counts[10000] == 1
    assert counts["+inf"] == 2
    lat = m.snapshot()["latency"]
    assert lat["count"] == 7 and abs(lat["sum_ms"] - 120011.71) < 0.01


def test_status_classes_and_odd_codes() -> None:
    m = TrackMetrics()
    for status in (101, 200, 204, 301, 404, 503, 599, 999):
        m.observe(status, 1)
    assert m.snapshot()["status"] == {"1xx": 1, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 3}


def test_snapshot_is_plain_json_data() -> None:
    m = TrackMetrics()
    m.requests, m.errors, m.aborted, m.inflight = 3, 1, 1, 2
    snap = m.snapshot()
    assert (snap["requests"], snap["errors"], snap["aborted"], snap["inflight"]) == (3, 1, 1, 2)
    assert snap["latency"]["buckets"][-1] == "+inf"
    assert len(snap["latency"]["buckets"]) == len(snap["latency"]["counts"]) == 14
    snap["latency"]["counts"][0] = 99  # a copy: the reader cannot corrupt the live counters
    assert m.counts[0] == 0
    u = UpstreamMetrics()
    u.requests, u.inflight, u.connect_failures, u.silent, u.ejected = 5, 3, 2, 1, True
    assert u.snapshot() == {"requests": 5, "inflight": 3, "connect_failures": 2, "silent": 1, "ejected": True}
    m.queued, m.queue_timeouts, m.queue_full = 4, 5, 6
    snap = m.snapshot()
    assert (snap["queued"], snap["queue_timeouts"], snap["queue_full"]) == (4, 5, 6)


def test_series_has_completed_seconds_only_and_errors_are_5xx() -> None:
    m = TrackMetrics()
    for now, status, ms in ((100.2, 200, 3.0), (100.9, 500, 3.1), (101.0, 404, 50.0), (101.5, 502, 2000.0),
                            (103.4, 200, 1.0)):
        m.observe(status, ms, now=now)
    assert m.series(0, now=103.9) == [
        {"t": 100, "requests": 2, "errors": 1, "latency": {str(bucket_of(3.0)): 2}},
        {"t": 101, "requests": 2, "errors": 1, "latency": {str(bucket_of(50.0)): 1, str(bucket_of(2000.0)): 1}},
    ]  # 102 had no traffic (omitted); 103 is still open
    assert bucket_of(3.0) == bucket_of(3.1) and lower_ms(bucket_of(50.0)) < 50 <= upper_ms(bucket_of(50.0))
    assert [p["t"] for p in m.series(100, now=104.0)] == [101, 103]
    # the wall clock steps back to 102.5 after second 103 was read: counted in the open second
    # (104), never in one a reader has already seen, and never lost
    m.observe(200, 1.0, now=102.5)
    m.observe(200, 1.0, now=104.2)
    assert m.series(101, now=104.5) == [{"t": 103, "requests": 1, "errors": 0,
                                         "latency": {str(bucket_of(1.0)): 1}}]
    assert m.series(103, now=105.0) == [{"t": 104, "requests": 2, "errors": 0,
                                         "latency": {str(bucket_of(1.0)): 2}}]
    assert m.series(103, now=200.0) == m.series(103, now=105.0)  # reading twice changes nothing


def test_series_keeps_the_last_600_seconds() -> None:
    m = TrackMetrics()
    for s in range(1000, 1000 + 700):
        m.observe(200, 1.0, now=s + 0.5)
    points = m.series(0, now=1700.1)
    assert len(points) == SERIES_SECONDS == 600
    assert points[0]["t"] == 1100 and points[-1]["t"] == 1699
    assert sum(p["requests"] for p in points) == 600


def test_series_buckets_are_the_shared_histogram_buckets() -> None:
    rnd = random.Random(3)
    for ms in [0.0, 0.05, 0.051, 1.0, 50.0, 999.9, 200000.0, *(rnd.lognormvariate(2, 2) for _ in range(5000))]:
        m = TrackMetrics()
        m.observe(200, ms, now=10.5)
        assert m.series(0, now=12)[0]["latency"] == {str(bucket_of(ms)): 1}, ms


def test_series_ring_holds_only_seconds_it_can_still_answer_with_sparse_traffic() -> None:
    """A blue-green track serves every other 10 s: the ring is trimmed by time, not only by
    count, so it never holds seconds older than SERIES_SECONDS (issue 13's soak)."""
    m = TrackMetrics()
    base = 1_000_000
    for t in range(base, base + 4 * SERIES_SECONDS):
        if (t // 10) % 2:
            m.observe(200, 1.0, now=t + 0.5)
    now = base + 4 * SERIES_SECONDS + 0.5
    m.observe(200, 1.0, now=now)
    assert len(m.ring) <= SERIES_SECONDS // 2 + 10
    assert all(t >= int(now) - SERIES_SECONDS for t, *_ in m.ring)
    assert [p["t"] for p in m.series(0, now + 1)] == [t for t, *_ in m.ring][-len(m.series(0, now + 1)):]


def test_fine_buckets_at_every_bound_of_both_schemes() -> None:
    """observe() bisects the shared bounds only within the slice its coarse bucket allows: at
    and around every bound of both schemes it finds the bucket a full bisect finds."""
    values = [0.0, 1e-6, 1e9, float("inf")]
    for b in (*BOUNDS_MS, *LATENCY_BUCKETS_MS):
        values += [math.nextafter(b, 0), float(b), math.nextafter(b, math.inf)]
    for ms in values:
        m = TrackMetrics()
        m.observe(200, ms, now=10.5)
        assert m.series(0, now=12)[0]["latency"] == {str(bisect.bisect_left(BOUNDS_MS, ms)): 1}, ms
        assert m.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] == 1, ms
