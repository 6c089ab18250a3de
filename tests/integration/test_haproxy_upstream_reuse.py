"""Servers HAProxy got through `add server` reuse their idle connections to the instance, as
servers of the configuration file do: without it every request costs a connect() and a
close() to the instance (HAProxy 2.6 gives a dynamic server no idle pool)."""

from __future__ import annotations

import pytest
from test_router_support import HAProxyHandle, RawClient, make_table, running_haproxy, upstreams

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def haproxy():
    async with running_haproxy() as h:
        yield h


async def test_added_servers_keep_their_connections_to_the_instances(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue-a", "blue-b") as (a, b):
        await haproxy.set(make_table(1, {"blue": [a, b]}, {"blue": 100}))
        state = await haproxy.router.proc.api.servers_state("shop__blue")
        assert len(state) == 2     # servers of the running worker (added), not of the file
        c = await RawClient.open(haproxy.port)
        try:
            names = [(await c.request()).json()["name"] for _ in range(40)]
        finally:
            c.close()
        assert set(names) == {"blue-a", "blue-b"}
        # one connection per instance (a few more if HAProxy opens one while another is busy)
        assert a.connections + b.connections <= 4, (a.connections, b.connections)
