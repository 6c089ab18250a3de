"""Several services on one listen address by Host, on a real HAProxy, through the Router port
only (ensure with domains / apply / current / stats / stop): exact names and wildcards, 404
for an unknown host, one service's rollout under keep-alive load on the other changes nothing
of the other, adding and removing a service on the shared address (a reload) drops nothing,
a stop leaves the other serving, and TLS with one certificate per service picked by SNI.

The same shape as test_router_hosts.py (the embedded side, parametrised over ROUTER_KINDS);
the two are merged into one file over both kinds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from test_router_support import RawClient, TestUpstream, free_port, make_table, short_tmpdir, upstreams
from test_router_tls import client_context, curl, installed, tls_get

from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.router.haproxy.adapter import HAProxyRouter
from support.certs import TestCA

pytestmark = pytest.mark.timeout(90)

SHOP = ("shop.example.test",)
CART = ("cart.example.test", "*.cart.example.test", "*.eu.cart.example.test")


@contextlib.asynccontextmanager
async def shared(tls: bool = False) -> AsyncIterator[tuple[HAProxyRouter, int, dict[str, TestUpstream], Any]]:
    """shop and cart on one port by Host; upstreams shop-blue, shop-green, cart, cart-eu."""
    with short_tmpdir() as d:
        paths = StatePaths(d).ensure()
        ca = TestCA(d / "ca")
        router = HAProxyRouter(d / "haproxy")
        port = free_port()
        async with upstreams("shop-blue", "shop-green", "cart", "cart-eu") as ups:
            by = {u.name: u for u in ups}
            try:
                await router.ensure("shop", f"127.0.0.1:{port}", domains=SHOP)
                await router.ensure("cart", f"127.0.0.1:{port}", domains=CART)
                shop_tls = installed(paths, ca.issue("shop", SHOP)) if tls else None
                cart_tls = installed(paths, ca.issue("cart", CART[:2])) if tls else None
                await router.apply(make_table(1, {"blue": [by["shop-blue"]], "green": [by["shop-green"]]},
                                              {"blue": 100}, service="shop", tls=shop_tls))
                await router.apply(make_table(1, {"blue": [by["cart"]], "green": [by["cart-eu"]]}, {"blue": 100},
                                              service="cart", aliases={"eu": "green"}, tls=cart_tls))
                yield router, port, by, (paths, ca)
            finally:
                router.proc.kill()
                await router.close()


async def get(port: int, host: str, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, str]:
    c = await RawClient.open(port)
    try:
        r = await asyncio.wait_for(c.request("GET", path, {"Host": host, **(headers or {})}), 5)
        return r.status, (r.json()["name"] if r.status == 200 else r.body.decode())
    finally:
        c.close()


async def test_exact_names_and_wildcards_pick_the_service_and_an_unknown_host_is_404() -> None:
    async with shared() as (router, port, _by, _x):
        assert await get(port, "shop.example.test") == (200, "shop-blue")
        assert await get(port, "SHOP.Example.Test:8443") == (200, "shop-blue")   # port cut, case folded
        assert await get(port, "shop.example.test.") == (200, "shop-blue")        # a trailing dot too
        assert await get(port, "cart.example.test") == (200, "cart")
        assert await get(port, "a.cart.example.test") == (200, "cart")
        assert await get(port, "a.b.cart.example.test") == (200, "cart")          # a wildcard, any depth
        for host in ("example.test", "www.shop.example.test", "cart.example.test.evil", "xcart.example.test"):
            status, body = await get(port, host)
            assert status == 404, host
            assert body == f"shipyard: no service on 127.0.0.1:{port} answers for host {host}\n"
        c = await RawClient.open(port)
        try:
            c.writer.write(b"GET / HTTP/1.0\r\n\r\n")
            r = await asyncio.wait_for(c.read_response(), 5)
            assert r.status == 404 and b"without a host name" in r.body, r.body
        finally:
            c.close()
        # each service's own rules apply after the Host: its preview token and track names
        from test_router_support import track
        assert await get(port, "cart.example.test", headers=track("eu")) == (200, "cart-eu")
        assert await get(port, "shop.example.test", headers=track("green")) == (200, "shop-green")
        assert await get(port, "shop.example.test", headers=track("eu")) == (200, "shop-blue")  # cart's alias
        assert (await router.stats("cart"))["tracks"]["green"]["requests"] == 1
        assert (await router.stats("shop"))["tracks"]["blue"]["requests"] == 4


async def test_the_longest_wildcard_wins() -> None:
    async with shared() as (router, port, by, _x):
        with pytest.raises(RouterError, match="both claim"):       # cart claims it already
            await router.ensure("eu", f"127.0.0.1:{port}", domains=["*.eu.cart.example.test"])
        assert await get(port, "x.eu.cart.example.test") == (200, "cart")
        worker = router.proc.worker_pid
        await router.ensure("cart", f"127.0.0.1:{port}", domains=CART[:2])    # a domains change: no reload
        assert router.proc.worker_pid == worker
        await router.ensure("eu", f"127.0.0.1:{port}", domains=["*.eu.cart.example.test"])
        await router.apply(make_table(1, {"blue": [by["cart-eu"]]}, {"blue": 100}, service="eu"))
        assert await get(port, "x.eu.cart.example.test") == (200, "cart-eu")
        assert await get(port, "x.cart.example.test") == (200, "cart")
        # the wildcard map swapped at runtime (a domains change) keeps the longest suffix first
        worker = router.proc.worker_pid
        await router.ensure("cart", f"127.0.0.1:{port}", domains=("*.cart.example.test", "*.a.test"))
        assert router.proc.worker_pid == worker
        assert await get(port, "x.eu.cart.example.test") == (200, "cart-eu")
        assert await get(port, "y.x.cart.example.test") == (200, "cart")
        assert await get(port, "b.a.test") == (200, "cart")
        assert (await get(port, "cart.example.test"))[0] == 404          # no longer one of its names


async def test_a_listen_without_domains_is_not_shared() -> None:
    async with shared() as (router, port, _by, _x):
        with pytest.raises(RouterError, match="names no domains"):
            await router.ensure("solo", f"127.0.0.1:{port}")
        assert await get(port, "shop.example.test") == (200, "shop-blue")
        with pytest.raises(RouterError):
            await router.current("solo")


@dataclass
class Load:
    """Keep-alive clients asking one host in a loop: what answered, and what failed."""

    port: int
    host: str
    clients: int = 8
    names: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    closes: int = 0
    """Responses that closed their connection (HAProxy's old worker after a reload)."""
    _stop: bool = False

    async def run(self) -> None:
        async def one() -> None:
            c = await RawClient.open(self.port)
            while not self._stop:
                try:
                    r = await asyncio.wait_for(c.request("GET", "/", {"Host": self.host}), 5)
                    if r.status != 200:
                        self.errors.append(f"{r.status} {r.body[:100]!r}")
                    else:
                        self.names[r.json()["name"]] += 1
                    if r.headers.get("connection", "").lower() == "close":
                        self.closes += 1
                        c.close()
                        c = await RawClient.open(self.port)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, json.JSONDecodeError) as e:
                    self.errors.append(repr(e))
                    c.close()
                    c = await RawClient.open(self.port)
            c.close()
        await asyncio.gather(*(one() for _ in range(self.clients)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        task = asyncio.create_task(self.run())
        await asyncio.sleep(0.3)
        try:
            yield self
        finally:
            await asyncio.sleep(0.3)
            self._stop = True
            await asyncio.wait_for(task, 10)


async def test_a_rollout_of_one_service_changes_nothing_of_the_other() -> None:
    async with shared() as (router, port, by, _x):
        worker = router.proc.worker_pid
        async with Load(port, "cart.example.test").running() as cart:
            table = await router.current("shop")
            assert table is not None
            t0 = time.monotonic()
            for v in range(2, 12):   # switches, a canary split, an instance added and taken away
                weights = [{"green": 100}, {"blue": 100}, {"blue": 90, "green": 10}][v % 3]
                tracks = dict(table.tracks)
                if v % 2:
                    tracks["green"] = (by["shop-green"].upstream, by["shop-blue"].upstream)
                table = replace(table, version=v, weights=weights, tracks=tracks)
                await router.apply(table)
                assert await get(port, "shop.example.test", "/") in ((200, "shop-blue"), (200, "shop-green"))
            swaps = time.monotonic() - t0
        assert cart.errors == [] and cart.closes == 0, (cart.errors[:5], cart.closes)
        assert set(cart.names) == {"cart"} and sum(cart.names.values()) > 100, cart.names
        assert router.proc.worker_pid == worker                 # no reload for any of it
        print(f"cart: {sum(cart.names.values())} responses, 0 errors, during 10 swaps of shop in {swaps:.2f}s")


async def test_adding_and_removing_a_service_on_the_shared_address_drops_nothing() -> None:
    async with shared() as (router, port, by, _x), upstreams("api") as (api,):
        workers = {router.proc.worker_pid}
        async with Load(port, "shop.example.test").running() as shop:
            for _ in range(3):
                await router.ensure("api", f"127.0.0.1:{port}", domains=["api.example.test"])   # a reload
                workers.add(router.proc.worker_pid)
                await router.apply(make_table(1, {"blue": [api]}, {"blue": 100}, service="api"))
                workers.add(router.proc.worker_pid)
                assert await get(port, "api.example.test") == (200, "api")
                await router.stop("api")                                                        # a reload
                workers.add(router.proc.worker_pid)
                assert (await get(port, "api.example.test"))[0] == 404
        answered = sum(shop.names.values())
        print(f"shop: {answered} responses, {len(shop.errors)} errors, {shop.closes} connections closed by "
              f"the old worker, across 3 adds and 3 removals of api ({len(workers) - 1} reloads)")
        assert len(workers) >= 7                         # each add and each removal reloaded
        assert shop.errors == [] and set(shop.names) == {"shop-blue"} and answered > 100, shop.errors[:5]


async def test_stopping_one_service_leaves_the_other_serving() -> None:
    async with shared() as (router, port, _by, _x):
        await router.stop("cart")
        assert (await get(port, "cart.example.test"))[0] == 404
        assert await get(port, "shop.example.test") == (200, "shop-blue")
        with pytest.raises(RouterError):
            await router.stats("cart")
        assert (await router.stats("shop"))["tracks"]["blue"]["requests"] == 1


async def test_tls_one_certificate_per_service_by_sni_and_a_rotation_of_one_leaves_the_other() -> None:
    async with shared(tls=True) as (router, port, _by, (paths, ca)):
        def https(host: str) -> list[str]:
            return ["--cacert", str(ca.pem), "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"]
        for host, name in (("shop.example.test", "shop-blue"), ("cart.example.test", "cart"),
                           ("x.cart.example.test", "cart")):
            code, out, err = await curl(*https(host))
            assert code == 0 and json.loads(out)["name"] == name, (host, err)
        shop_fp = (await router.stats("shop"))["tls"]["fingerprint"]
        worker = router.proc.worker_pid
        table = await router.current("cart")
        assert table is not None
        new = installed(paths, ca.issue("cart2", CART[:2]))
        await router.apply(replace(table, version=2, tls=new))
        ctx = client_context(ca)
        assert (await tls_get(port, ctx, name="cart.example.test"))[2] == new.fingerprint
        assert (await tls_get(port, ctx, name="shop.example.test"))[2] == shop_fp
        assert router.proc.worker_pid == worker                       # set ssl cert, no reload
        assert (await router.stats("cart"))["tls"] == {"fingerprint": new.fingerprint, "rotations": 1,
                                                       "redirect_http": None}
        assert (await router.stats("shop"))["tls"]["fingerprint"] == shop_fp
        code, out, err = await curl(*https("shop.example.test"))
        assert code == 0 and json.loads(out)["name"] == "shop-blue", err
        # both services on one redirect listener: each Host is sent to its own https name
        rport = free_port()
        for service, domains in (("shop", SHOP), ("cart", CART)):
            await router.ensure(service, f"127.0.0.1:{port}", redirect_http=f"127.0.0.1:{rport}", domains=domains)
        for host in ("shop.example.test", "x.cart.example.test"):
            code, out, err = await curl("-i", "-H", f"Host: {host}:{rport}", f"http://127.0.0.1:{rport}/a?b=1")
            assert code == 0 and out.startswith("HTTP/1.1 308"), (code, err)
            assert f"location: https://{host}:{port}/a?b=1\r\n" in out.lower()
        code, out, err = await curl("-L", *https("x.cart.example.test")[:4], f"http://x.cart.example.test:{rport}/",
                                    "--resolve", f"x.cart.example.test:{rport}:127.0.0.1")
        assert code == 0 and json.loads(out)["name"] == "cart", err
        # a service on the shared TLS address without a certificate is refused, the others go on
        await router.ensure("plain", f"127.0.0.1:{port}", domains=["plain.example.test"])
        async with upstreams("plain") as (plain,):
            with pytest.raises(RouterError, match="serves plain HTTP"):
                await router.apply(make_table(1, {"blue": [plain]}, {"blue": 100}, service="plain"))
        code, out, err = await curl(*https("cart.example.test"))
        assert code == 0 and json.loads(out)["name"] == "cart", err


async def test_a_killed_haproxy_and_a_new_adapter_serve_both_services_again() -> None:
    async with shared() as (router, port, _by, _x):
        from test_router_support import kill_group
        assert router.proc.master_pid is not None
        kill_group(router.proc.master_pid)
        await asyncio.sleep(0.2)
        assert router.exited("shop") and router.exited("cart")
        lost = await router.ensure("shop", f"127.0.0.1:{port}", domains=SHOP)     # the supervisor's repair
        assert lost is not None and lost["signal"] == "SIGKILL"
        assert await get(port, "shop.example.test") == (200, "shop-blue")
        assert await get(port, "x.cart.example.test") == (200, "cart")
        # a restarted daemon: a new adapter adopts the running HAProxy with both services
        await router.close()
        again = HAProxyRouter(router.files.root)
        try:
            assert await again.ensure("cart", f"127.0.0.1:{port}", domains=CART) is None
            assert again.proc.worker_pid == router.proc.worker_pid
            assert (await again.current("shop")).version == 1                  # type: ignore[union-attr]
            assert await get(port, "cart.example.test") == (200, "cart")
            assert (await again.stats("cart"))["tracks"]["blue"]["requests"] >= 1
        finally:
            await again.close()


async def test_adding_and_removing_a_service_under_wrk_load_on_another_drops_nothing() -> None:
    import shutil
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (tools/system-deps.sh)")
    from test_router_tls_rotation import DURATION, wrk, wrk_errors
    async with shared() as (router, port, _by, _x), upstreams("api") as (api,):
        load = asyncio.create_task(wrk(f"http://127.0.0.1:{port}/", 64, "-H", "Host: shop.example.test"))
        await asyncio.sleep(1)
        workers = {router.proc.worker_pid}
        for _ in range(3):
            await router.ensure("api", f"127.0.0.1:{port}", domains=["api.example.test"])
            await router.apply(make_table(1, {"blue": [api]}, {"blue": 100}, service="api", sticky_header="X-U"))
            workers.add(router.proc.worker_pid)
            await asyncio.sleep(DURATION / 12)
            await router.stop("api")
            workers.add(router.proc.worker_pid)
            await asyncio.sleep(DURATION / 12)
        result = wrk_errors(await load)
        print(f"wrk -c 64 on shop across {len(workers) - 1} reloads (3 adds, 3 removals of api): {result}")
        assert len(workers) >= 7
        assert result["requests"] > 1000 and result["socket_errors"] == 0 and result["non_2xx"] == 0, result
