"""Per-track metrics: bucket boundaries and the snapshot the controller reads."""

from __future__ import annotations

from shipyard.router.metrics import LATENCY_BUCKETS_MS, TrackMetrics, UpstreamMetrics


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
    u.requests, u.connect_failures, u.ejected = 5, 2, True
    assert u.snapshot() == {"requests": 5, "connect_failures": 2, "ejected": True}
