"""router.workers: N embedded router processes on one address (SO_REUSEPORT, one socket set
each, all held by the daemon). Under load from keep-alive clients: a switch is served by every
worker once apply returns, the merged stats count every request exactly once, a worker killed
-9 refuses no connection and is replaced alone, and 1 -> 2 -> 1 fails no request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field

import pytest
from test_router_embedded import paths, router  # noqa: F401 (fixtures)
from test_router_support import RawClient, free_port, make_table, upstreams

from shipyard.paths import StatePaths
from shipyard.router.embedded import EmbeddedRouter
from shipyard.router.embedded_process import ServiceClient

pytestmark = pytest.mark.timeout(60)

CLIENTS = 16
"""Keep-alive connections: the kernel hashes each to one worker's socket, so with 16 both
workers get some (all on one: 2 in 65,536)."""


@dataclass
class Load:
    port: int
    stop: bool = False
    answers: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time the request was sent, upstream name) of each 200."""
    failed: list[str] = field(default_factory=list)
    refused: int = 0


async def _client(load: Load, reconnect_every: int = 0) -> None:
    """Requests back to back on one connection (a fresh one every `reconnect_every` requests:
    new connections reach whichever worker the kernel picks), as an HTTP client does: a new
    connection after a response saying `Connection: close`."""
    c: RawClient | None = None
    n = 0
    while not load.stop:
        try:
            if c is None:
                c = await RawClient.open(load.port)
            sent = time.monotonic()
            r = await asyncio.wait_for(c.request(), 10)
        except ConnectionRefusedError:
            load.refused += 1
            c = None
            continue
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            load.failed.append(f"{type(e).__name__}: {e}")
            c = None
            continue
        if r.status != 200:
            load.failed.append(f"status {r.status}: {r.body[:100]!r}")
        else:
            load.answers.append((sent, r.json()["name"]))
        n += 1
        if r.headers.get("connection", "").lower() == "close" or (reconnect_every and n % reconnect_every == 0):
            c.close()
            c = None
        await asyncio.sleep(0.005)
    if c is not None:
        c.close()


async def _run(load: Load, reconnect_every: int = 0) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(_client(load, reconnect_every)) for _ in range(CLIENTS)]
    for _ in range(200):
        if len(load.answers) >= CLIENTS:
            break
        await asyncio.sleep(0.02)
    return tasks


async def _stop(load: Load, tasks: list[asyncio.Task[None]]) -> None:
    load.stop = True
    await asyncio.gather(*tasks)


def _router_pids(er: EmbeddedRouter) -> set[int]:
    return er.pids("shop") - {os.getpid()}


async def test_switch_under_load_reaches_every_worker_and_stats_count_each_request(
        router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    async with upstreams("blue", "green") as (blue, green):
        await router.ensure("shop", f"127.0.0.1:{port}", workers=2)
        assert len(_router_pids(router)) == 2
        await router.apply(make_table(1, {"blue": [blue]}, {"blue": 100}))
        load = Load(port)
        tasks = await _run(load)
        await asyncio.sleep(0.3)
        await router.apply(make_table(2, {"blue": [blue], "green": [green]}, {"green": 100}))
        applied = time.monotonic()
        await asyncio.sleep(0.5)
        await _stop(load, tasks)
        assert not load.failed and not load.refused
        late = [name for sent, name in load.answers if sent > applied]
        assert late and set(late) == {"green"}      # no request sent after apply returned met blue
        assert (await router.current("shop")).version == 2  # type: ignore[union-attr]
        stats = await router.stats("shop")
        assert sum(t["requests"] for t in stats["tracks"].values()) == len(load.answers)
        assert sum(t["status"]["2xx"] for t in stats["tracks"].values()) == len(load.answers)
        per_worker = [w["requests"] for w in stats["workers"]]
        assert len(per_worker) == 2 and min(per_worker) > 0, per_worker   # both workers took connections
        listen = f"127.0.0.1:{port}"
        for control in (router._files_of(listen).control, router._extra[listen][1].files.control):
            own = await ServiceClient(control, "shop").stats()              # each worker's own counts
            assert own["tracks"]["green"]["requests"] > 0 and own["version"] == 2
        assert sum(stats["tracks"]["green"]["latency"]["counts"]) == stats["tracks"]["green"]["requests"]
        await asyncio.sleep(1.05)           # every second with a request is complete now
        series = await router.series("shop", 0)
        assert sum(p["requests"] for points in series["series"].values() for p in points) == len(load.answers)
        assert sum(n for points in series["series"].values() for p in points
                   for n in p["latency"].values()) == len(load.answers)    # histograms merged bucket by bucket
        await router.stop("shop")
        assert not _router_pids(router)


async def test_a_worker_killed_under_load_refuses_nothing_and_is_replaced_alone(
        router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    async with upstreams("blue") as (blue,):
        await router.ensure("shop", f"127.0.0.1:{port}", workers=2)
        await router.apply(make_table(1, {"blue": [blue]}, {"blue": 100}))
        first = int(json.loads(router.pid_file("shop").read_text())["pid"])
        (victim,) = _router_pids(router) - {first}
        load = Load(port)
        tasks = await _run(load, reconnect_every=5)    # new connections all along, on both sockets
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):
            if router.exited("shop"):
                break
            await asyncio.sleep(0.02)
        assert router.exited("shop")
        await asyncio.sleep(0.3)            # connections hashed to its socket wait in its backlog
        lost = await router.ensure("shop", f"127.0.0.1:{port}")
        assert lost is not None and lost["pid"] == victim and lost["signal"] == "SIGKILL"
        assert not router.exited("shop")
        pids = _router_pids(router)
        assert first in pids and victim not in pids and len(pids) == 2    # only the dead one replaced
        await asyncio.sleep(0.5)
        await _stop(load, tasks)
        assert load.refused == 0
        # only requests in flight on the killed worker may fail (at most one per connection there)
        assert len(load.failed) <= CLIENTS, load.failed
        assert (await router.current("shop")).version == 1  # type: ignore[union-attr]
        await router.stop("shop")


async def test_one_to_two_to_one_workers_under_load_fails_no_request(router: EmbeddedRouter) -> None:  # noqa: F811
    """And a switch while a worker is going reaches it too: it still serves its last clients."""
    port = free_port()
    async with upstreams("blue", "green") as (blue, green):
        await router.ensure("shop", f"127.0.0.1:{port}")
        await router.apply(make_table(1, {"blue": [blue]}, {"blue": 100}))
        load = Load(port)
        tasks = await _run(load, reconnect_every=5)
        await asyncio.sleep(0.3)
        await router.ensure("shop", f"127.0.0.1:{port}", workers=2)
        assert len(_router_pids(router)) == 2
        assert (await router.stats("shop"))["limits"]["max_conns_per_instance"] == 64
        await asyncio.sleep(0.8)
        grown = len(load.answers)
        idle = [await RawClient.open(port) for _ in range(CLIENTS)]   # some on each worker, left idle
        assert [(await c.request()).status for c in idle] == [200] * CLIENTS
        shrink = asyncio.create_task(router.ensure("shop", f"127.0.0.1:{port}", workers=1))
        await asyncio.sleep(0.5)        # the departing worker keeps its idle clients for 2 s
        assert not shrink.done()
        await router.apply(make_table(2, {"blue": [blue], "green": [green]}, {"green": 100}))
        applied = time.monotonic()
        answers = [await c.request() for c in idle]     # on both workers, the departing one too
        assert [r.json()["name"] for r in answers] == ["green"] * CLIENTS
        assert any(r.headers.get("connection") == "close" for r in answers)   # its clients are told to move
        for c in idle:
            c.close()
        await shrink
        assert len(_router_pids(router)) == 1
        await asyncio.sleep(0.5)
        await _stop(load, tasks)
        assert load.refused == 0 and not load.failed, load.failed[:5]
        assert len(load.answers) > grown > 0
        late = [name for sent, name in load.answers if sent > applied]
        assert late and set(late) == {"green"}
        assert router.worker_count(f"127.0.0.1:{port}") == 1
        await router.stop("shop")


async def test_a_restarted_daemon_readopts_every_worker_and_holds_their_sockets(
        paths: StatePaths, router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    listen = f"127.0.0.1:{port}"
    async with upstreams("blue") as (blue,):
        await router.ensure("shop", listen, workers=2)
        await router.apply(make_table(1, {"blue": [blue]}, {"blue": 100}))
        pids = _router_pids(router)
        router._close_sockets("shop")          # as if the daemon that bound them had exited
        for w in router._extra[listen].values():
            for s in w.socks:
                s.close()
        restarted = EmbeddedRouter(paths)      # asked for no count: it finds 2 workers
        assert await restarted.ensure("shop", listen) is None
        assert _router_pids(restarted) == pids and not restarted.exited("shop")
        await restarted.apply(make_table(2, {"blue": [blue]}, {"blue": 100}))
        assert (await restarted.stats("shop"))["version"] == 2 and len((await restarted.stats("shop"))["workers"]) == 2
        first = int(json.loads(restarted.pid_file("shop").read_text())["pid"])
        (victim,) = pids - {first}
        os.kill(victim, signal.SIGKILL)
        router._children[victim].wait(5)
        assert restarted.exited("shop")
        clients = [await RawClient.open(port) for _ in range(CLIENTS)]     # none refused: all queued
        pending = [asyncio.create_task(c.request()) for c in clients]
        lost = await restarted.ensure("shop", listen)
        assert lost is not None and lost["pid"] == victim
        assert all(r.status == 200 for r in await asyncio.wait_for(asyncio.gather(*pending), 10))
        for c in clients:
            c.close()
        assert (await restarted.current("shop")).version == 2   # type: ignore[union-attr]
        await restarted.stop("shop")
        assert not _router_pids(restarted)


async def test_worker_zero_dead_across_a_daemon_restart_is_restarted_beside_the_live_one(
        paths: StatePaths, router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    listen = f"127.0.0.1:{port}"
    async with upstreams("blue") as (blue,):
        await router.ensure("shop", listen, workers=2)
        await router.apply(make_table(1, {"blue": [blue]}, {"blue": 100}))
        first = int(json.loads(router.pid_file("shop").read_text())["pid"])
        (other,) = _router_pids(router) - {first}
        router._close_sockets("shop")          # the daemon exits ...
        for w in router._extra[listen].values():
            for s in w.socks:
                s.close()
        os.kill(first, signal.SIGKILL)         # ... and worker 0 dies before the next one starts
        router._children[first].wait(5)
        restarted = EmbeddedRouter(paths)
        lost = await restarted.ensure("shop", listen)    # binds worker 0's socket beside worker 1's
        assert lost is not None and lost["pid"] == first
        pids = _router_pids(restarted)
        assert other in pids and first not in pids and len(pids) == 2
        assert [(await _get_status(port)) for _ in range(CLIENTS)] == [200] * CLIENTS
        await restarted.stop("shop")


async def _get_status(port: int) -> int:
    c = await RawClient.open(port)
    try:
        return (await c.request()).status
    finally:
        c.close()
