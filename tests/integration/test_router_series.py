"""Per-track series at 1 s resolution from a real router: exact totals, errors of every
kind, latency buckets, and continuity across table swaps."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_router_support import (
    PREVIEW_TOKEN,
    ROUTER_KINDS,
    RawClient,
    free_port,
    make_table,
    running_kind,
    running_router,
    short_tmpdir,
    track,
    upstreams,
)

from shipyard.histogram import bucket_of, lower_ms, upper_ms
from shipyard.router.table import RoutingTable, Upstream

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


@pytest.fixture(params=ROUTER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The router-independent tests here run against both routers."""
    return str(request.param)


async def next_second() -> None:
    """Sleep until the wall-clock second in progress is over, so it counts as completed."""
    await asyncio.sleep(int(time.time()) + 1.02 - time.time())


def totals(series: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[int, int]]:
    return {track: (sum(p["requests"] for p in points), sum(p["errors"] for p in points))
            for track, points in series.items()}


def latencies(points: list[dict[str, Any]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for p in points:
        out.update({int(b): n for b, n in p["latency"].items()})
    return out


def check_shape(answer: dict[str, Any], since: float) -> None:
    """Completed seconds only, after `since`, ascending, histograms that add up."""
    for points in answer["series"].values():
        ts = [p["t"] for p in points]
        assert ts == sorted(set(ts)) and all(since < t < int(answer["now"]) for t in ts), (ts, since, answer["now"])
        for p in points:
            assert sum(p["latency"].values()) == p["requests"] > 0 and 0 <= p["errors"] <= p["requests"]


async def test_series_counts_every_outcome_exactly(workdir: Path) -> None:
    dead = Upstream("dead-0", "127.0.0.1", free_port())  # nothing listens: connect refused
    async with upstreams("blue", "green") as (blue, green), \
            running_router(workdir, extra=["--response-timeout", "1"]) as router:
        start = time.time()
        c = await RawClient.open(router.port)
        slow = await RawClient.open(router.port)
        try:
            for _ in range(2):  # no table yet: the router's own 503, under "(none)"
                assert (await c.request()).status == 503
            table = RoutingTable("shop", 1, {"blue": (blue.upstream,), "green": (green.upstream,),
                                             "dead": (dead,), "hung": (green.upstream,)}, {"blue": 100},
                                 preview_token=PREVIEW_TOKEN)
            await router.set(table)
            sent = time.perf_counter()
            hung = asyncio.create_task(slow.request("GET", "/sleep?s=4", track("hung")))
            statuses: Counter[tuple[str, int]] = Counter()
            for path, n in (("/", 25), ("/status?code=500", 10), ("/status?code=404", 5), ("/status?code=503", 2)):
                for _ in range(n):
                    statuses["blue", (await c.request("GET", path)).status] += 1
            for _ in range(12):  # an upstream that sleeps 50 ms
                statuses["green", (await c.request("GET", "/sleep?s=0.05", track("green"))).status] += 1
            for _ in range(7):
                statuses["dead", (await c.request(headers=track("dead"))).status] += 1
            assert statuses == {("blue", 200): 25, ("blue", 500): 10, ("blue", 404): 5, ("blue", 503): 2,
                                ("green", 200): 12, ("dead", 502): 7}
            first = await router.client.series(start - 1)  # the current second is never included
            check_shape(first, start - 1)
            assert (await hung).status == 504  # the instance did not answer within 1 s
            hung_ms = (time.perf_counter() - sent) * 1000
            await next_second()
            since = int(first["now"]) - 1
            rest = await router.client.series(since)
            check_shape(rest, since)
        finally:
            c.close()
            slow.close()
        merged = {t: first["series"].get(t, []) + rest["series"].get(t, []) for t in {*first["series"], *rest["series"]}}
        for points in merged.values():
            ts = [p["t"] for p in points]
            assert ts == sorted(set(ts)), "a second was reported twice"
        assert totals(merged) == {"(none)": (2, 2), "blue": (42, 12), "green": (12, 0), "dead": (7, 7),
                                  "hung": (1, 1)}
        green = latencies(merged["green"])
        assert sum(green.values()) == 12
        assert all(bucket_of(50) <= b and upper_ms(b) <= 150 for b in green), green  # 50 ms + router overhead
        (timed_out,) = latencies(merged["hung"])  # the router's clock ran inside the client's
        assert lower_ms(timed_out) <= hung_ms and upper_ms(timed_out) >= 0.5 * hung_ms
        assert sum(latencies(merged["blue"]).values()) == 42
        assert max(latencies(merged["blue"])) < bucket_of(50)  # none of blue's answers waited


async def test_swaps_mid_traffic_keep_the_series_continuous(workdir: Path, kind: str) -> None:
    """Weights move and a track even leaves the table while clients hammer the router; the
    per-second series, polled as the daemon would, add up exactly to what clients saw."""
    async with upstreams("blue", "green") as (blue, green), running_kind(kind, workdir) as router:
        both = {"blue": [blue], "green": [green]}
        await router.set(make_table(1, both, {"blue": 50, "green": 50}))
        start = time.time()
        stop = asyncio.Event()
        seen: Counter[str] = Counter()
        failures: list[str] = []

        async def client() -> None:
            c = await RawClient.open(router.port)
            try:
                while not stop.is_set():
                    r = await c.request()
                    if r.status != 200:
                        failures.append(f"{r.status} {r.body!r}")
                    seen[r.json()["name"]] += 1
            finally:
                c.close()

        polled: dict[str, list[dict[str, Any]]] = {}
        since = start - 1

        async def poll() -> None:
            nonlocal since
            answer = await router.client.series(since)
            check_shape(answer, since)
            for track, points in answer["series"].items():
                polled.setdefault(track, []).extend(points)
            since = int(answer["now"]) - 1

        async def swapper() -> None:
            plans = [(both, {"blue": 30, "green": 70}), (both, {"blue": 100, "green": 0}),
                     ({"blue": [blue]}, {"blue": 100}), (both, {"blue": 0, "green": 100}),
                     (both, {"blue": 99.5, "green": 0.5})]
            for v in range(2, 26):
                tracks, weights = plans[v % len(plans)]
                await router.set(make_table(v, tracks, weights))
                if v % 4 == 0:
                    await poll()
                await asyncio.sleep(0.1)
            stop.set()

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        await swapper()
        await asyncio.gather(*tasks)
        await next_second()
        await poll()
        assert failures == []
        assert sum(seen.values()) > 500 and set(seen) == {"blue", "green"}, seen
        for points in polled.values():
            ts = [p["t"] for p in points]
            assert ts == sorted(set(ts)), "a second was reported twice"
        assert totals(polled) == {"blue": (seen["blue"], 0), "green": (seen["green"], 0)}
        whole = await router.client.series(start - 1)
        assert whole["series"] == polled  # one read of everything equals the sum of the polls
        assert len(polled["blue"]) >= 2  # the traffic really spanned several seconds


async def test_series_of_a_fresh_router_is_empty(workdir: Path, kind: str) -> None:
    async with running_kind(kind, workdir) as router:
        answer = await router.client.series(0)
        assert answer["series"] == {} and abs(answer["now"] - time.time()) < 5
