"""The embedded router's side of a shared address: one process for every service on it, re-adopted
by a restarted daemon (one copy of the listening socket per address), and its crash repaired by
any one service's ensure, with every service told what became of it and served its own table."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from test_router_embedded import paths, router  # noqa: F401 (fixtures)
from test_router_support import RawClient, free_port, make_table, upstreams

from shipyard.paths import StatePaths
from shipyard.router.embedded import EmbeddedRouter

pytestmark = pytest.mark.timeout(60)


async def get(port: int, host: str) -> tuple[int, str | None]:
    c = await RawClient.open(port)
    try:
        r = await asyncio.wait_for(c.request("GET", "/", {"Host": host}), 10)
        return r.status, r.headers.get("x-upstream")
    finally:
        c.close()


def pid_of(er: EmbeddedRouter, service: str) -> int:
    return int(json.loads(er.pid_file(service).read_text())["pid"])


async def test_a_restarted_daemon_readopts_the_shared_router_and_repairs_its_crash(
        paths: StatePaths, router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    listen = f"127.0.0.1:{port}"
    async with upstreams("shop", "blog") as (shop, blog):
        await router.ensure("shop", listen, domains=["shop.test"])
        await router.ensure("blog", listen, domains=["blog.test"])
        await router.apply(make_table(3, {"blue": [shop]}, {"blue": 100}, service="shop"))
        await router.apply(make_table(5, {"blue": [blog]}, {"blue": 100}, service="blog"))
        pid = pid_of(router, "shop")
        assert pid_of(router, "blog") == pid and len(router._children) == 1   # one process for both

        router._close_listen(listen)                 # the first daemon is gone: its copy with it
        restarted = EmbeddedRouter(paths)
        try:
            assert await restarted.ensure("shop", listen, domains=["shop.test"]) is None
            assert await restarted.ensure("blog", listen, domains=["blog.test"]) is None
            assert pid_of(restarted, "shop") == pid_of(restarted, "blog") == pid     # adopted, not replaced
            assert list(restarted._sockets) == [listen]                             # one copy per address
            assert restarted.pids("blog") == {pid, os.getpid()}

            os.kill(pid, signal.SIGKILL)
            router._children[pid].wait(5)
            assert restarted.exited("shop") and restarted.exited("blog")
            pending = asyncio.create_task(get(port, "blog.test"))    # queued by the daemon's copy
            lost = await restarted.ensure("shop", listen, domains=["shop.test"])
            assert lost is not None and lost["pid"] == pid and "earlier daemon" in lost["reason"]
            assert await asyncio.wait_for(pending, 10) == (200, "blog")   # blog's table, served again
            assert not restarted.exited("blog")
            told = await restarted.ensure("blog", listen, domains=["blog.test"])
            assert told == lost                                          # blog records the crash too
            assert await restarted.ensure("blog", listen, domains=["blog.test"]) is None   # once
            assert await get(port, "shop.test") == (200, "shop")
            assert (await restarted.current("shop")).version == 3 and (await restarted.current("blog")).version == 5
            await restarted.stop("shop")
            assert await get(port, "blog.test") == (200, "blog")
            await restarted.stop("blog")
        finally:
            router._children.update(restarted._children)   # the fixture kills what either started


async def test_a_service_the_router_cannot_serve_is_refused_and_changes_nothing(
        router: EmbeddedRouter) -> None:  # noqa: F811
    from test_router_listen_socket import _connects

    from shipyard.errors import RouterError

    port = free_port()
    listen = f"127.0.0.1:{port}"
    async with upstreams("shop") as (shop,):
        await router.ensure("shop", listen)                       # every host: the address is shop's
        await router.apply(make_table(2, {"blue": [shop]}, {"blue": 100}, service="shop"))
        with pytest.raises(RouterError, match="cannot serve blog: .*taken by shop, which names no domains"):
            await router.ensure("blog", listen, domains=["blog.test"])
        assert await get(port, "blog.test") == (200, "shop") and not router.pid_file("blog").exists()
        await router.stop("shop")

    other = free_port()            # a router started for a service it then cannot serve is not left open
    with pytest.raises(RouterError, match="cannot serve cart"):
        await router.ensure("cart", f"127.0.0.1:{other}", domains=["Not_A_Name"])
    assert not await _connects(other) and router._sockets == {} and router._children == {}
