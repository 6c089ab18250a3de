"""Many services on one port by Host, on either router, through the Router port only (ensure,
apply, current, stats, stop): real router processes, real sockets, real keep-alive clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_router_support import (
    ROUTER_KINDS,
    RawClient,
    Response,
    TestUpstream,
    free_port,
    make_table,
    short_tmpdir,
    track,
    upstreams,
)

from shipyard.paths import StatePaths
from shipyard.router.embedded import EmbeddedRouter
from shipyard.router.haproxy.adapter import HAProxyRouter

SHOP = ("shop.test", "*.shop.test")
BLOG = ("blog.test", "*.blog.test", "api.shop.test", "*.eu.shop.test")


@contextlib.asynccontextmanager
async def router_of(kind: str) -> AsyncIterator[Any]:
    """A Router port of `kind` in a short temp dir; every service it served is stopped after."""
    with short_tmpdir() as d:
        router: Any = (EmbeddedRouter(StatePaths(d / "state").ensure()) if kind == "embedded"
                       else HAProxyRouter(d / "haproxy"))
        served: list[str] = []
        real_ensure = router.ensure

        async def ensure(service: str, *a: Any, **kw: Any) -> Any:
            served.append(service)
            return await real_ensure(service, *a, **kw)

        router.ensure = ensure
        try:
            yield router
        finally:
            for service in dict.fromkeys(served):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(router.stop(service), 15)
            if kind == "haproxy":
                with contextlib.suppress(Exception):
                    await router.close()


@contextlib.asynccontextmanager
async def two_services(kind: str) -> AsyncIterator[tuple[Any, int, list[TestUpstream]]]:
    """shop (SHOP) and blog (BLOG) on one free port; shop's tracks blue/green, blog's one."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    async with router_of(kind) as router, upstreams("shop-blue", "shop-green", "blog") as ups:
        blue, green, blog = ups
        await router.ensure("shop", listen, kind, domains=SHOP)
        await router.ensure("blog", listen, kind, domains=BLOG)
        await router.apply(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100}, service="shop"))
        await router.apply(make_table(1, {"blue": [blog]}, {"blue": 100}, service="blog"))
        yield router, port, ups


async def get(port: int, host: str, path: str = "/", target: str | None = None) -> Response:
    c = await RawClient.open(port)
    try:
        return await asyncio.wait_for(c.request("GET", target or path, {"Host": host}), 10)
    finally:
        c.close()


def served_by(r: Response) -> str:
    return r.headers.get("x-upstream", f"(status {r.status})")


def track_requests(stats: dict[str, Any]) -> int:
    return sum(int(t.get("requests", 0)) for t in stats.get("tracks", {}).values())


@pytest.fixture(params=ROUTER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_two_services_share_one_port_by_exact_and_wildcard_host(kind: str) -> None:
    async with two_services(kind) as (router, port, _ups):
        cases = {
            "shop.test": "shop-blue", "SHOP.Test:8443": "shop-blue",   # case and a port do not matter
            "a.b.shop.test": "shop-blue",                               # a wildcard at any depth
            "api.shop.test": "blog",                                    # the exact name beats a wildcard
            "x.eu.shop.test": "blog",                                   # the longest wildcard wins
            "blog.test": "blog", "www.blog.test": "blog",
        }
        for host, want in cases.items():
            r = await get(port, host)
            assert (r.status, served_by(r)) == (200, want), host
        # a forced track is the service's own: shop's green, and none of blog's (it has no green)
        for host, want in (("shop.test", "shop-green"), ("blog.test", "blog")):
            c = await RawClient.open(port)
            try:
                r = await asyncio.wait_for(c.request("GET", "/", {"Host": host, **track("green")}), 10)
            finally:
                c.close()
            assert (r.status, served_by(r)) == (200, want), host
        # an absolute-form target routes by its host; one naming another host than Host: the embedded
        # router follows the target (RFC 9112 3.2.2), HAProxy refuses the mismatch itself (docs/spec.md)
        r = await get(port, "blog.test", target="http://blog.test/x")
        assert (r.status, served_by(r)) == (200, "blog")
        r = await get(port, "shop.test", target="http://blog.test/x")
        assert (r.status, served_by(r)) == ((200, "blog") if kind == "embedded" else (400, "(status 400)"))
        assert (await router.current("shop")).service == "shop"
        assert (await router.current("blog")).version == 1


async def test_an_unknown_host_gets_a_404_naming_it_and_counts_for_no_service(kind: str) -> None:
    async with two_services(kind) as (router, port, _ups):
        for host in ("shop.test", "blog.test"):
            assert (await get(port, host)).status == 200
        before = {s: track_requests(await router.stats(s)) for s in ("shop", "blog")}
        for host in ("nope.test", "shop.test.evil", "xshop.test"):
            r = await get(port, host)
            assert r.status == 404, host
            assert r.headers.get("content-type", "").startswith("text/plain")
            assert host.encode() in r.body, r.body
        after = {s: track_requests(await router.stats(s)) for s in ("shop", "blog")}
        assert after == before


async def test_a_swap_and_a_rollback_of_one_service_change_nothing_of_the_other(kind: str) -> None:
    """blog under steady keep-alive load while shop switches blue -> green and back, 20 times:
    every blog response is blog's, none fails, no blog connection is closed."""
    async with two_services(kind) as (router, port, (blue, green, _blog)):
        clients = [await RawClient.open(port) for _ in range(8)]
        seen: Counter[str] = Counter()
        stop = asyncio.Event()

        async def load(c: RawClient) -> None:
            while not stop.is_set():
                r = await asyncio.wait_for(c.request("GET", "/", {"Host": "blog.test"}), 10)
                seen[f"{r.status} {served_by(r)}"] += 1

        async def switches() -> list[str]:
            got = []
            for v in range(2, 22):
                live = "green" if v % 2 == 0 else "blue"
                await router.apply(make_table(v, {"blue": [blue], "green": [green]}, {live: 100}, service="shop"))
                got.append(served_by(await get(port, "shop.test")))
                await asyncio.sleep(0.05)
            return got

        try:
            blog_before = (await router.stats("blog"))["tracks"]["blue"]["requests"]
            tasks = [asyncio.create_task(load(c)) for c in clients]
            t0 = time.monotonic()
            shop_served = await switches()
            stop.set()
            await asyncio.gather(*tasks)        # any failed or closed connection raises here
        finally:
            stop.set()
            for c in clients:
                c.close()
        assert shop_served == ["shop-green" if v % 2 == 0 else "shop-blue" for v in range(2, 22)]
        assert set(seen) == {"200 blog"}, seen
        assert sum(seen.values()) > 100 * (time.monotonic() - t0) / 10, seen
        blog_stats = await router.stats("blog")
        assert blog_stats["tracks"]["blue"]["requests"] - blog_before == sum(seen.values())
        assert (await router.current("blog")).version == 1


async def test_stopping_one_service_leaves_the_other_serving_on_its_connections(kind: str) -> None:
    async with two_services(kind) as (router, port, _ups):
        kept = await RawClient.open(port)
        try:
            assert served_by(await kept.request("GET", "/", {"Host": "blog.test"})) == "blog"
            await router.stop("shop")
            assert (await get(port, "shop.test")).status == 404
            r = await kept.request("GET", "/", {"Host": "blog.test"})      # the same connection serves on
            assert (r.status, served_by(r)) == (200, "blog")
            assert (await get(port, "www.blog.test")).status == 200
        finally:
            kept.close()


async def unknown_hosts(router: Any, want: int, timeout: float = 5.0) -> int:
    """The listener's unknown-host count in the stats of shop, once it reaches `want` (HAProxy's
    comes from its log lines, a moment after the responses) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        got = int((await router.stats("shop"))["listener"]["unknown_host"]["requests"])
        if got >= want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_an_unknown_host_keeps_its_keep_alive_connection_and_is_counted_once(kind: str) -> None:
    """HTTP/1.1 requests for an unknown host (with and without a body, HEAD) are answered 404 on
    a connection that then serves a known host; HTTP/1.0 and Connection: close end it. Each 404
    is counted exactly once as the listener's, the same on both routers."""
    async with two_services(kind) as (router, port, _ups):
        base = await unknown_hosts(router, 0, timeout=0)
        c = await RawClient.open(port)
        try:
            for method, body in (("GET", None), ("POST", b"x" * 5000), ("HEAD", None), ("DELETE", b"")):
                r = await asyncio.wait_for(c.request(method, "/", {"Host": "nope.test"}, body), 10)
                assert r.status == 404, method
                assert "close" not in r.headers.get("connection", "").lower(), (method, r.headers)
                r = await asyncio.wait_for(c.request("GET", "/", {"Host": "blog.test"}), 10)
                assert (r.status, served_by(r)) == (200, "blog"), method
        finally:
            c.close()
        for version, headers in (("HTTP/1.0", {}), ("HTTP/1.1", {"Connection": "close"})):
            c = await RawClient.open(port)
            try:
                r = await asyncio.wait_for(c.request("GET", "/", {"Host": "nope.test", **headers}, version=version), 10)
                assert r.status == 404
                assert await c.closed_by_peer(), version
            finally:
                c.close()
        assert await unknown_hosts(router, base + 6) == base + 6
        await asyncio.sleep(0.3)                        # nothing more arrives late
        assert await unknown_hosts(router, 0, timeout=0) == base + 6
        listener = (await router.stats("blog"))["listener"]
        assert listener["listen"] == f"127.0.0.1:{port}" and listener["services"] == ["blog", "shop"]
        assert listener["unknown_host"]["status"]["4xx"] == base + 6


async def test_a_pipelined_unknown_host_between_known_ones_gets_its_404_in_order(kind: str) -> None:
    """Five requests written at once on one keep-alive connection, the second and fourth for
    unknown hosts (one with a body), the first still in progress at its instance when the
    others arrive: each known one gets its own service's answer, each unknown one its 404, in
    the order sent, and the connection then serves a known host again. When the 404's turn comes
    before its body is in, the embedded router waits for the body and serves on, HAProxy answers
    at once and closes. Nothing of the unknown hosts' requests reaches an instance, and the
    listener counts them, on both routers."""
    async with two_services(kind) as (router, port, (blue, _green, blog)):
        base = await unknown_hosts(router, 0, timeout=0)
        c = await RawClient.open(port)
        try:
            c.send("GET", "/sleep?s=0.3&n=1", {"Host": "shop.test"})
            c.send("POST", "/?n=2", {"Host": "nope.test"}, b"dropped body " * 40)
            c.send("GET", "/?n=3", {"Host": "blog.test"})
            c.send("GET", "/?n=4", {"Host": "xshop.test"})
            c.send("GET", "/?n=5", {"Host": "www.shop.test"})
            got = [await asyncio.wait_for(c.read_response(), 10) for _ in range(5)]
            assert [r.status for r in got] == [200, 404, 200, 404, 200], [(r.status, r.body[:80]) for r in got]
            assert [served_by(r) for r in got[::2]] == ["shop-blue", "blog", "shop-blue"]
            assert [r.json()["path"] for r in got[::2]] == ["/sleep?s=0.3&n=1", "/?n=3", "/?n=5"]
            assert b"nope.test" in got[1].body and b"xshop.test" in got[3].body
            for r in got[1::2]:
                assert "close" not in r.headers.get("connection", "").lower(), r.headers
            r = await asyncio.wait_for(c.request("GET", "/?n=6", {"Host": "blog.test"}), 10)
            assert (r.status, served_by(r), r.json()["path"]) == (200, "blog", "/?n=6")
            # its turn comes while its body is still on the way: the embedded router answers once
            # the body is in and serves on; HAProxy answers at once and closes (docs/spec.md)
            c.send("GET", "/sleep?s=0.2&n=7", {"Host": "blog.test"})
            c.writer.write(b"PUT /?n=8 HTTP/1.1\r\nHost: nope.test\r\nContent-Length: 2000\r\n\r\n" + b"a" * 900)
            r = await asyncio.wait_for(c.read_response(), 10)
            assert (r.status, r.json()["path"]) == (200, "/sleep?s=0.2&n=7")
            if kind == "embedded":
                await asyncio.sleep(0.2)
                c.writer.write(b"b" * 1100)
                c.send("GET", "/?n=9", {"Host": "shop.test"})
            r = await asyncio.wait_for(c.read_response(), 10)
            assert r.status == 404 and b"nope.test" in r.body, (r.status, r.body)
            if kind == "embedded":
                assert "close" not in r.headers.get("connection", "").lower(), r.headers
                r = await asyncio.wait_for(c.read_response(), 10)
                assert (r.status, served_by(r), r.json()["path"]) == (200, "shop-blue", "/?n=9")
                assert not await c.closed_by_peer(0.3)
            else:
                assert r.headers.get("connection") == "close" and await c.closed_by_peer()
        finally:
            c.close()
        assert [s.path for s in blue.seen] == ["/sleep?s=0.3&n=1", "/?n=5", *(["/?n=9"] if kind == "embedded" else [])]
        assert [s.path for s in blog.seen] == ["/?n=3", "/?n=6", "/sleep?s=0.2&n=7"]
        assert await unknown_hosts(router, base + 3) == base + 3
