"""Several router workers on one address, the pure parts: each worker's share of the limits,
and one service's stats and series merged from every worker as one router would report them."""

from __future__ import annotations

import pytest

from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.service_plane import ServicePlane
from shipyard.router.table import RoutingTable, Upstream
from shipyard.router.worker_stats import merge_series, merge_stats


def _table(max_conns: int = 65, queue_size: int = 4097) -> RoutingTable:
    return RoutingTable("shop", 3, {"blue": (Upstream("b1", "127.0.0.1", 9000),)}, {"blue": 100},
                        max_conns_per_instance=max_conns, queue_size=queue_size)


def test_each_worker_enforces_its_floor_share_of_the_limits() -> None:
    plane = ServicePlane("shop", "127.0.0.1:8080", _table(), workers=2)
    route = plane.state.routes["blue"]
    assert (route.limit, route.waiting.size) == (32, 2048)      # floor(65 / 2), floor(4097 / 2)
    plane.share(4)
    route = plane.state.routes["blue"]
    assert (route.limit, route.waiting.size) == (16, 1024)
    assert plane.table.max_conns_per_instance == 65          # the table itself is not changed
    plane.share(1)
    assert (plane.state.routes["blue"].limit, plane.state.routes["blue"].waiting.size) == (65, 4097)
    alone = ServicePlane("shop", "127.0.0.1:8080", _table(max_conns=3, queue_size=0), workers=3)
    assert (alone.state.routes["blue"].limit, alone.state.routes["blue"].waiting.size) == (1, 0)


def _stats(requests: int, latencies: list[float], inflight: int, version: int = 3) -> dict:
    m = TrackMetrics()
    for ms in latencies:
        m.requests += 1
        m.observe(200, ms, now=1000.0)
    m.requests += inflight
    m.inflight = inflight
    assert m.requests == requests
    return {"version": version, "uptime": 1.0, "tracks": {"blue": {**m.snapshot(), "release": "img1"}},
            "upstreams": {"b1": {"track": "blue", "address": "127.0.0.1:9000", "requests": requests,
                                 "inflight": inflight, "connect_failures": 1, "silent": 0, "ejected": False}},
            "limits": {"max_conns_per_instance": 64, "queue_size": 4096}, "domains": [],
            "listener": {"listen": "127.0.0.1:8080", "services": ["shop"],
                         "unknown_host": {"requests": 1, "status": {"4xx": 1}}}}


def test_stats_are_summed_bucket_by_bucket_and_limits_kept() -> None:
    a, b = _stats(3, [0.5, 3.0], 1), _stats(2, [3.0, 700.0], 0, version=2)
    got = merge_stats([a, b])
    blue = got["tracks"]["blue"]
    assert (blue["requests"], blue["inflight"], blue["status"]["2xx"]) == (5, 1, 4)
    assert blue["latency"]["counts"] == [x + y for x, y in zip(a["tracks"]["blue"]["latency"]["counts"],
                                                               b["tracks"]["blue"]["latency"]["counts"], strict=True)]
    assert blue["latency"]["count"] == 4 and blue["latency"]["sum_ms"] == pytest.approx(706.5)
    assert blue["release"] == "img1"
    assert got["upstreams"]["b1"]["requests"] == 5 and got["upstreams"]["b1"]["connect_failures"] == 2
    assert got["limits"] == {"max_conns_per_instance": 64, "queue_size": 4096}    # not summed
    assert got["version"] == 2                                                   # the worker behind shows
    assert got["listener"]["unknown_host"] == {"requests": 2, "status": {"4xx": 2}}
    assert got["workers"] == [{"worker": 0, "requests": 3}, {"worker": 1, "requests": 2}]
    assert a["tracks"]["blue"]["requests"] == 3                                 # inputs left as they were


def test_series_are_summed_per_second_up_to_the_earliest_worker_now() -> None:
    a = {"now": 1002.5, "series": {"blue": [{"t": 1000, "requests": 2, "errors": 1, "latency": {"3": 2}},
                                            {"t": 1001, "requests": 1, "errors": 0, "latency": {"4": 1}}]}}
    b = {"now": 1003.1, "series": {"blue": [{"t": 1001, "requests": 4, "errors": 0, "latency": {"3": 1, "4": 3}},
                                            {"t": 1002, "requests": 9, "errors": 0, "latency": {"4": 9}}],
                                   "green": [{"t": 1000, "requests": 1, "errors": 0, "latency": {"5": 1}}]}}
    got = merge_series([a, b])
    assert got["now"] == 1002.5
    assert got["series"]["blue"] == [{"t": 1000, "requests": 2, "errors": 1, "latency": {"3": 2}},
                                     {"t": 1001, "requests": 5, "errors": 0, "latency": {"4": 4, "3": 1}}]
    assert got["series"]["green"] == [{"t": 1000, "requests": 1, "errors": 0, "latency": {"5": 1}}]
