"""The promise of the router: table swaps under load never fail or close anything."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from test_router_support import ROUTER_KINDS, RawClient, make_table, running_kind, short_tmpdir, upstreams

pytestmark = pytest.mark.timeout(40)

CLIENTS = 32
SWAPS = 24
SWAP_EVERY = 0.125  # 24 swaps over 3 s


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


@pytest.fixture(params=ROUTER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_zero_failed_requests_during_rapid_swaps(workdir: Path, kind: str) -> None:
    async with upstreams("blue-a", "blue-b", "green-a", "green-b") as (ba, bb, ga, gb), \
            running_kind(kind, workdir) as router:
        tracks = {"blue": [ba, bb], "green": [ga, gb]}
        await router.set(make_table(1, tracks, {"blue": 100, "green": 0}))
        stop = asyncio.Event()
        failures: list[str] = []
        served: Counter[str] = Counter()
        swapping = asyncio.Event()

        async def client(i: int) -> None:
            c = await RawClient.open(router.port)
            port = c.local_port
            try:
                while not stop.is_set():
                    try:
                        r = await asyncio.wait_for(c.request("POST" if i % 4 == 0 else "GET", f"/c{i}",
                                                             body=b"x" * 100 if i % 4 == 0 else None), 5)
                    except Exception as e:  # a reset, a close, a timeout: all are failures
                        failures.append(f"client {i}: {type(e).__name__} {e}")
                        return
                    if r.status != 200:
                        failures.append(f"client {i}: status {r.status} {r.body!r}")
                    else:
                        served[r.json()["name"]] += 1
                    if c.local_port != port:
                        failures.append(f"client {i}: connection changed")
            finally:
                c.close()

        async def swapper() -> None:
            await asyncio.sleep(0.2)
            swapping.set()
            for v in range(2, SWAPS + 2):
                live = "green" if v % 2 == 0 else "blue"
                await router.set(make_table(v, tracks, {live: 100, ("blue" if live == "green" else "green"): 0}))
                await asyncio.sleep(SWAP_EVERY)
            stop.set()

        tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
        await swapper()
        await asyncio.gather(*tasks)

        assert failures == []
        assert (await router.client.get_table()).version == SWAPS + 1  # type: ignore[union-attr]
        assert set(served) == {"blue-a", "blue-b", "green-a", "green-b"}, served
        assert sum(served.values()) > 1000, served  # it really was under load
        stats = await router.client.stats()
        for track in ("blue", "green"):
            t = stats["tracks"][track]
            assert t["errors"] == 0 and t["status"]["5xx"] == 0 and t["inflight"] == 0


async def test_swap_to_new_instances_while_old_ones_stop(workdir: Path, kind: str) -> None:
    """Blue-green cut-over: the table moves to green, then blue's instances go away.
    Pooled connections to blue are dropped, never reused, and no request fails."""
    async with upstreams("blue", "green") as (blue, green), running_kind(kind, workdir) as router:
        await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
        clients = [await RawClient.open(router.port) for _ in range(8)]
        try:
            for c in clients:
                assert (await c.request()).json()["name"] == "blue"
            await router.set(make_table(2, {"blue": [blue], "green": [green]}, {"blue": 0, "green": 100}))
            await blue.stop()
            for _ in range(5):
                rs = await asyncio.gather(*(c.request() for c in clients))
                assert {r.json()["name"] for r in rs} == {"green"}
            stats = await router.client.stats()
            assert stats["tracks"]["green"]["errors"] == 0
        finally:
            for c in clients:
                c.close()
