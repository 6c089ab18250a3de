"""HAProxyRouter.stats reads what only HAProxy knows at this moment from its stats socket
(`show stat`): requests in flight and queued per track and per instance, and an instance out
of rotation, so /metrics and the dashboard show real numbers on this router too."""

from __future__ import annotations

import asyncio

import pytest
from test_router_support import HAProxyHandle, RawClient, make_table, running_haproxy, upstreams

from shipyard.router.haproxy.services import server_name

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def haproxy():
    async with running_haproxy() as h:
        yield h


async def _hold(port: int, n: int, seconds: float) -> tuple[list[RawClient], list[asyncio.Task]]:
    clients = [await RawClient.open(port) for _ in range(n)]
    for c in clients:
        c.send("GET", f"/sleep?s={seconds}")
    return clients, [asyncio.create_task(c.read_response()) for c in clients]


async def test_requests_in_flight_and_queued_are_counted(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue-a", "blue-b") as (a, b):
        await haproxy.set(make_table(1, {"blue": [a, b]}, {"blue": 100}))
        clients, answers = await _hold(haproxy.port, 4, 1.5)
        try:
            await asyncio.sleep(0.5)
            stats = await haproxy.stats()
            assert stats["tracks"]["blue"]["inflight"] == 4, stats["tracks"]["blue"]
            assert stats["tracks"]["blue"]["queued"] == 0
            assert {u["inflight"] for u in stats["upstreams"].values()} == {2}      # round robin
            assert not any(u["ejected"] for u in stats["upstreams"].values())
            assert all(r.status == 200 for r in await asyncio.gather(*answers))
        finally:
            for c in clients:
                c.close()
        assert (await haproxy.stats())["tracks"]["blue"]["inflight"] == 0

        await haproxy.set(make_table(2, {"blue": [a]}, {"blue": 100}, max_conns_per_instance=1))
        clients, answers = await _hold(haproxy.port, 3, 1.0)
        try:
            await asyncio.sleep(0.5)
            blue = (await haproxy.stats())["tracks"]["blue"]
            assert (blue["inflight"], blue["queued"]) == (3, 2), blue   # 1 at the instance, 2 waiting
            assert all(r.status == 200 for r in await asyncio.gather(*answers))
        finally:
            for c in clients:
                c.close()


async def test_an_instance_out_of_rotation_is_ejected(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue-a", "blue-b") as (a, b):
        await haproxy.set(make_table(1, {"blue": [a, b]}, {"blue": 100}))
        await haproxy.router.proc.api.set_state("shop__blue", server_name(b.upstream), "maint")
        ups = (await haproxy.stats())["upstreams"]
        assert (ups[a.upstream.id]["ejected"], ups[b.upstream.id]["ejected"]) == (False, True), ups
