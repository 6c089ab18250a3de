"""What only the HAProxy data plane must prove: traffic changes never reload it (the worker pid
stays), its bucket hash is table.track_for's, a killed HAProxy comes back with the last
table, and it outlives the adapter that started it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from test_router_support import (
    PREVIEW_TOKEN,
    HAProxyHandle,
    RawClient,
    free_port,
    make_table,
    running_haproxy,
    short_tmpdir,
    track,
    upstreams,
)

from shipyard.errors import RouterError
from shipyard.procfs import pid_alive
from shipyard.router.haproxy.adapter import HAProxyRouter
from shipyard.router.haproxy.process import find_binary
from shipyard.router.table import RoutingTable, Upstream

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


@pytest.fixture
async def haproxy(workdir: Path):
    async with running_haproxy(workdir) as h:
        yield h


async def names(c: RawClient, n: int = 6, **headers: str) -> set[str]:
    return {(await c.request(headers=headers)).json()["name"] for _ in range(n)}


async def test_a_whole_blue_green_and_canary_rollout_never_reloads(haproxy: HAProxyHandle) -> None:
    """Switch, rollback, an instance replaced, a canary walked to 100 %: one worker throughout,
    and after every apply a kept-alive connection already gets the new state."""
    async with upstreams("blue-a", "blue-b", "green-a", "green-b") as (ba, bb, ga, gb):
        sticky = {"sticky_header": "X-User-Id"}
        await haproxy.set(make_table(1, {"blue": [ba, bb]}, {"blue": 100}, **sticky))
        pid = haproxy.worker_pid   # after the first table, whose sticky header is configuration
        assert pid and pid_alive(pid)
        c = await RawClient.open(haproxy.port)
        try:
            assert await names(c) == {"blue-a", "blue-b"}
            steps: list[tuple[dict[str, list], dict[str, float], set[str]]] = [
                ({"blue": [ba, bb], "green": [ga, gb]}, {"blue": 100, "green": 0}, {"blue-a", "blue-b"}),
                ({"blue": [ba, bb], "green": [ga, gb]}, {"blue": 0, "green": 100}, {"green-a", "green-b"}),  # switch
                ({"blue": [ba, bb], "green": [ga, gb]}, {"blue": 100, "green": 0}, {"blue-a", "blue-b"}),  # rollback
                ({"blue": [ba], "green": [ga, gb]}, {"blue": 100, "green": 0}, {"blue-a"}),  # blue-b replaced...
                ({"blue": [ba, bb], "green": [ga, gb]}, {"blue": 100, "green": 0}, {"blue-a", "blue-b"}),  # ...back
            ]
            version = 1
            for tracks, weights, expected in steps:
                version += 1
                await haproxy.set(make_table(version, tracks, weights, **sticky))
                assert await names(c) == expected, (version, weights)
            users = [f"user-{i}" for i in range(200)]
            both = {"blue": [ba, bb], "green": [ga, gb]}
            for w in (1, 5, 25, 50, 100):
                version += 1
                table = make_table(version, both, {"green": w, "blue": 100 - w}, bucket_order=("green", "blue"),
                                   aliases={"canary": "green", "stable": "blue"}, **sticky)
                await haproxy.set(table)
                for u in users:
                    got = (await c.request(headers={"X-User-Id": u})).json()["name"]
                    assert got.split("-")[0] == table.track_for(None, u), (w, u)
            assert (await c.request(headers=track("stable"))).json()["name"].startswith("blue")
        finally:
            c.close()
        assert haproxy.worker_pid == pid and pid_alive(pid)
        assert haproxy.router.proc.pids() == {haproxy.router.proc.master_pid, pid}


async def test_haproxy_picks_the_track_that_track_for_picks_for_1000_random_keys(
        haproxy: HAProxyHandle) -> None:
    """The same CRC-32 bucket in both: random header keys (any visible ASCII) and cookie keys,
    at an uneven three-track split."""
    rnd = random.Random(14)
    async with upstreams("a", "b", "c") as (a, b, c3):
        table = make_table(1, {"a": [a], "b": [b], "c": [c3]}, {"a": 12.34, "b": 50.01, "c": 37.65},
                           sticky_header="X-Key", sticky_cookie="k", bucket_order=("b", "a"))
        await haproxy.set(table)
        alphabet = "".join(chr(i) for i in range(33, 127) if chr(i) not in ";,\"\\")
        keys = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 40))) for _ in range(1000)]
        c = await RawClient.open(haproxy.port)
        try:
            seen: Counter[str] = Counter()
            for i, key in enumerate(keys):
                headers = {"X-Key": key} if i % 2 else {"Cookie": f"x=1; k={key}"}
                got = (await c.request(headers=headers)).json()["name"]
                assert got == table.track_for(None, key), (key, headers)
                seen[got] += 1
            assert set(seen) == {"a", "b", "c"}, seen
        finally:
            c.close()


async def test_preview_needs_the_token_and_shipyard_headers_never_reach_the_instance(
        haproxy: HAProxyHandle) -> None:
    async with upstreams("blue", "green") as (blue, green):
        await haproxy.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0},
                                     aliases={"canary": "green"}))
        c = await RawClient.open(haproxy.port)
        try:
            r = await c.request(headers={**track("canary"), "X-Shipyard-Other": "x"})
            assert r.json()["name"] == "green"
            assert not [h for h in r.json()["headers"] if h.startswith("x-shipyard")]
            for wrong in ("", PREVIEW_TOKEN[:-1], PREVIEW_TOKEN + "0", PREVIEW_TOKEN.upper()):
                r = await c.request(headers={"X-Shipyard-Track": "green", "X-Shipyard-Preview-Token": wrong})
                assert r.json()["name"] == "blue", wrong
            assert (await c.request(headers={"X-Shipyard-Track": "green"})).json()["name"] == "blue"
            await haproxy.set(make_table(2, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0},
                                         preview_token=None))
            assert (await c.request(headers=track("green"))).json()["name"] == "blue"  # overrides off
        finally:
            c.close()


async def test_a_failed_connect_is_retried_on_another_instance_of_the_track(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue-a") as (a,):
        dead = Upstream("dead", "127.0.0.1", free_port())   # nothing listens there
        table = RoutingTable("shop", 1, {"blue": (dead, a.upstream)}, {"blue": 100})
        await haproxy.set(table)
        c = await RawClient.open(haproxy.port)
        try:
            got = Counter()
            for _ in range(20):
                r = await c.request()
                got[r.status, r.json()["name"] if r.status == 200 else ""] += 1
            assert got == {(200, "blue-a"): 20}
        finally:
            c.close()


async def test_a_killed_haproxy_is_restarted_by_ensure_with_the_last_table(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue", "green") as (blue, green):
        await haproxy.set(make_table(7, {"blue": [blue], "green": [green]}, {"blue": 0, "green": 100}))
        proc = haproxy.router.proc
        master, worker = proc.master_pid, proc.worker_pid
        assert master and worker
        os.kill(master, signal.SIGKILL)   # the master first: killed by the signal, not by its worker's end
        os.kill(worker, signal.SIGKILL)
        for _ in range(100):
            if haproxy.router.exited("shop"):
                break
            await asyncio.sleep(0.02)
        assert haproxy.router.exited("shop")
        lost = await haproxy.router.ensure("shop", haproxy.listen)
        assert lost is not None and lost["pid"] == master and lost["signal"] == "SIGKILL", lost
        assert proc.master_pid != master and proc.worker_pid != worker
        assert (await haproxy.get_table()).version == 7  # type: ignore[union-attr]
        c = await RawClient.open(haproxy.port)
        try:
            assert await names(c) == {"green"}
            assert (await c.request(headers=track("blue"))).json()["name"] == "blue"
        finally:
            c.close()
        assert await haproxy.router.ensure("shop", haproxy.listen) is None  # running: nothing lost


async def test_haproxy_outlives_its_adapter_and_a_new_one_adopts_it(workdir: Path) -> None:
    async with upstreams("blue", "green") as (blue, green):
        first = HAProxyHandle(workdir)
        master = worker = None
        try:
            await first.start()
            await first.set(make_table(3, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0}))
            master, worker = first.router.proc.master_pid, first.worker_pid
            await first.router.close()
            del first.router      # the daemon is gone; HAProxy is not
            c = await RawClient.open(first.port)
            try:
                assert await names(c) == {"blue"}
                second = HAProxyRouter(workdir / "haproxy")
                assert await second.ensure("shop", first.listen) is None
                assert (second.proc.master_pid, second.proc.worker_pid) == (master, worker)
                assert (await second.current("shop")).version == 3  # type: ignore[union-attr]
                await second.apply(make_table(4, {"blue": [blue], "green": [green]}, {"blue": 0, "green": 100}))
                assert await names(c) == {"green"}
                assert second.proc.worker_pid == worker
                # the 6 answers given while no reader ran wait in HAProxy's log ring for the next one
                for _ in range(150):
                    t0 = time.monotonic()
                    stats = await second.stats("shop")
                    took = time.monotonic() - t0
                    if stats["tracks"]["blue"]["requests"] == 6:
                        break
                    await asyncio.sleep(0.02)
                assert stats["tracks"]["green"]["requests"] == 6 and stats["tracks"]["blue"]["requests"] == 6
                assert took < 0.15   # no wait for lines an adopted HAProxy sent before this reader
                await second.close()
            finally:
                c.close()
            await second.stop("shop")
            for _ in range(100):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(master, os.WNOHANG)  # the first adapter's child: reap it
                if not pid_alive(master) and not pid_alive(worker):
                    break
                await asyncio.sleep(0.05)
            assert not pid_alive(master) and not pid_alive(worker)
        finally:
            if master and pid_alive(master):
                os.killpg(master, signal.SIGKILL)


def test_a_missing_haproxy_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("shipyard.router.haproxy.process.HAPROXY", "/nonexistent/haproxy")
    with pytest.raises(RouterError) as info:
        find_binary()
    assert "no haproxy executable" in info.value.message and "`haproxy`" in (info.value.hint or "")


async def test_stats_have_the_embedded_routers_shape(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue", "green") as (blue, green):
        table = make_table(5, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0},
                           releases={"blue": "img-1", "green": "img-2"})
        await haproxy.set(table)
        c = await RawClient.open(haproxy.port)
        try:
            for _ in range(9):
                assert (await c.request()).status == 200
            assert (await c.request("GET", "/status?code=500")).status == 500
        finally:
            c.close()
        for _ in range(50):   # the log datagram follows the response
            stats = await haproxy.stats()
            if stats["tracks"]["blue"]["requests"] == 10:
                break
            await asyncio.sleep(0.02)
        assert stats["version"] == 5 and stats["limits"]["max_conns_per_instance"] == 64
        assert stats["tracks"]["blue"]["requests"] == 10 and stats["tracks"]["blue"]["status"]["5xx"] == 1
        assert stats["tracks"]["blue"]["release"] == "img-1" and stats["tracks"]["green"]["requests"] == 0
        assert stats["upstreams"][blue.upstream.id]["requests"] == 10
        assert stats["upstreams"][green.upstream.id]["address"] == f"127.0.0.1:{green.port}"


async def test_a_port_in_use_is_a_clear_error_and_leaves_the_others_serving(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue") as (blue,):
        await haproxy.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
        pid = haproxy.worker_pid
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            busy = f"127.0.0.1:{taken.getsockname()[1]}"
            with pytest.raises(RouterError) as info:
                await haproxy.router.ensure("cart", busy)
        assert info.value.message == f"HAProxy for cart cannot listen on {busy}: address already in use"
        assert "another process uses" in (info.value.hint or "")
        assert haproxy.worker_pid == pid and "cart" not in haproxy.router._services
        c = await RawClient.open(haproxy.port)
        try:
            assert await names(c) == {"blue"}
        finally:
            c.close()


async def test_services_share_one_haproxy_and_leave_it_one_by_one(haproxy: HAProxyHandle) -> None:
    """A second service is a new frontend (the one reload the design allows); stopping a
    service removes it; the last one stops HAProxy."""
    async with upstreams("shop-v1", "cart-v1") as (shop, cart):
        await haproxy.set(make_table(1, {"blue": [shop]}, {"blue": 100}))
        cart_listen = f"127.0.0.1:{free_port()}"
        await haproxy.router.ensure("cart", cart_listen)
        await haproxy.router.apply(make_table(1, {"green": [cart]}, {"green": 100}, service="cart"))
        master = haproxy.router.proc.master_pid
        c = await RawClient.open(haproxy.port)
        d = await RawClient.open(int(cart_listen.rsplit(":", 1)[1]))
        try:
            assert await names(c) == {"shop-v1"} and await names(d) == {"cart-v1"}
            assert haproxy.router.pids("cart") == haproxy.router.pids("shop") != set()
        finally:
            c.close()
            d.close()
        await haproxy.router.stop("cart")
        c = await RawClient.open(haproxy.port)
        try:
            assert await names(c) == {"shop-v1"}
        finally:
            c.close()
        with pytest.raises(OSError):
            await RawClient.open(int(cart_listen.rsplit(":", 1)[1]))
        assert haproxy.router.pids("cart") == set()
        await haproxy.router.stop("shop")
        for _ in range(100):
            if not pid_alive(master):  # type: ignore[arg-type]
                break
            await asyncio.sleep(0.05)
        assert not pid_alive(master)  # type: ignore[arg-type]


async def test_a_stale_table_is_refused_and_changes_nothing(haproxy: HAProxyHandle) -> None:
    async with upstreams("blue", "green") as (blue, green):
        both = {"blue": [blue], "green": [green]}
        await haproxy.set(make_table(5, both, {"blue": 0, "green": 100}))
        with pytest.raises(RouterError, match="stale table: version 4 is older than the served version 5"):
            await haproxy.set(make_table(4, both, {"blue": 100, "green": 0}))
        assert (await haproxy.get_table()).version == 5  # type: ignore[union-attr]
        c = await RawClient.open(haproxy.port)
        try:
            assert await names(c) == {"green"}
        finally:
            c.close()


async def test_a_rollback_moves_users_with_one_command_per_changed_map_and_a_tampered_haproxy_gets_all(
        haproxy: HAProxyHandle) -> None:
    """A rollback (the same servers, the live track flips) sends HAProxy's Runtime API nothing
    before the users move but one `set map` per changed map; it still returns only once
    HAProxy serves the table. A map changed behind the adapter's back is found by the read-back
    and the whole table is sent again."""
    async with upstreams("blue", "green") as (blue, green):
        both = {"blue": [blue], "green": [green]}
        await haproxy.set(make_table(1, both, {"blue": 100, "green": 0}, aliases={"stable": "blue"}))
        api = haproxy.router.proc.api
        call = api.call
        sent: list[str] = []

        async def spy(command: str, payload: str | None = None) -> str:
            sent.append(command)
            return await call(command, payload)
        api.call = spy  # type: ignore[method-assign]
        buckets = haproxy.router.files.map_file("shop", "buckets")
        c = await RawClient.open(haproxy.port)
        try:
            await haproxy.set(make_table(2, both, {"blue": 0, "green": 100}, aliases={"stable": "green"}))
            assert await names(c) == {"green"}
            moved = next(i for i, cmd in enumerate(sent) if str(buckets) in cmd)
            assert sent[:moved + 1] == [f"set map {haproxy.router.files.map_file('shop', 'tracks')} stable green",
                                        f"set map {buckets} 0:9999 green"], sent

            await call(f"set map {buckets} 0:9999 blue")          # someone else's change
            assert await names(c) == {"blue"}
            sent.clear()
            await haproxy.set(make_table(3, both, {"blue": 0, "green": 100}, aliases={"stable": "green"}))
            assert await names(c) == {"green"}
            assert any(cmd.startswith("prepare map") and str(buckets) in cmd for cmd in sent), sent
        finally:
            c.close()

