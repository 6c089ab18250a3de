"""The embedded router's overload rules as a real process between real sockets: at most
max_conns_per_instance requests per instance, a FIFO queue per track (full, timeout, table
swap), and the per-try timeout that sends an idempotent request away from a silent instance."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_router_support import (
    RawClient,
    Response,
    RouterProcess,
    TestUpstream,
    make_table,
    running_router,
    short_tmpdir,
)

from shipyard.router.table import RoutingTable, Upstream, user_bucket

pytestmark = pytest.mark.timeout(60)


@dataclass
class CountingUpstream(TestUpstream):
    """A TestUpstream that records how many requests it serves at once, in which order they
    came, and that can hang: take requests and never answer (a stopped process)."""

    __test__ = False
    active: int = 0
    peak: int = 0
    hung: bool = False

    async def _respond(self, method, target, headers, reader, w, conn_id) -> bool:  # type: ignore[no-untyped-def]
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.hung:
                await asyncio.sleep(3600)
            return await super()._respond(method, target, headers, reader, w, conn_id)
        finally:
            self.active -= 1


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


@pytest.fixture
async def router(workdir: Path):
    async with running_router(workdir, extra=["--response-timeout", "2"]) as r:
        yield r


@pytest.fixture
async def farm():
    servers = [CountingUpstream(n) for n in ("blue", "green", "blue2")]
    try:
        for s in servers:
            await s.start()
        yield servers
    finally:
        for s in servers:
            await s.stop()


async def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> Response:
    c = await RawClient.open(port)
    try:
        return await c.request(method, path, body=body)
    finally:
        c.close()


async def stats(router: RouterProcess) -> dict:  # type: ignore[type-arg]
    return await router.client.stats()


async def test_an_instance_never_gets_more_than_its_limit(router: RouterProcess,
                                                          farm: list[CountingUpstream]) -> None:
    blue, blue2 = farm[0], farm[2]
    await router.set(make_table(1, {"blue": [blue, blue2]}, {"blue": 100.0}, max_conns_per_instance=3))
    peak_queued = 0

    async def watch() -> None:
        nonlocal peak_queued
        while True:
            peak_queued = max(peak_queued, (await stats(router))["tracks"]["blue"]["queued"])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        answers = await asyncio.gather(*(get(router.port, "/sleep?s=0.2") for _ in range(30)))
    finally:
        watcher.cancel()
    assert [r.status for r in answers] == [200] * 30
    assert blue.peak == 3 and blue2.peak == 3          # the limit, reached and never passed
    assert len(blue.seen) + len(blue2.seen) == 30      # per_try_timeout off (default): a slow answer is no silence
    assert peak_queued >= 10                           # 30 - 6 waited, and the stats showed it
    s = await stats(router)
    assert s["tracks"]["blue"]["queued"] == 0 and s["tracks"]["blue"]["queue_full"] == 0
    assert all(u["inflight"] == 0 and not u["ejected"] for u in s["upstreams"].values())


async def test_waiting_requests_go_out_first_come_first_served(router: RouterProcess,
                                                               farm: list[CountingUpstream]) -> None:
    blue = farm[0]
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100.0}, max_conns_per_instance=1))
    first = asyncio.create_task(get(router.port, "/sleep?s=0.5&n=first"))
    await asyncio.sleep(0.1)
    rest = []
    for i in range(6):
        rest.append(asyncio.create_task(get(router.port, f"/sleep?s=0.01&n={i}")))
        await asyncio.sleep(0.03)
    assert [r.status for r in await asyncio.gather(first, *rest)] == [200] * 7
    order = [s.path.rsplit("n=", 1)[1] for s in blue.seen]
    assert order == ["first", "0", "1", "2", "3", "4", "5"]
    assert blue.peak == 1


async def test_a_full_queue_answers_503_at_once_and_says_why(router: RouterProcess,
                                                             farm: list[CountingUpstream]) -> None:
    blue = farm[0]
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100.0}, max_conns_per_instance=1, queue_size=1))
    busy = asyncio.create_task(get(router.port, "/sleep?s=1"))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(get(router.port, "/sleep?s=0.01"))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    refused = await get(router.port, "/")
    assert time.monotonic() - t0 < 0.3
    assert refused.status == 503 and refused.headers.get("retry-after") == "1"
    text = refused.body.decode()
    assert "over capacity" in text and "max_conns_per_instance" in text and "queue_size" in text, text
    assert (await busy).status == 200 and (await queued).status == 200
    assert (await stats(router))["tracks"]["blue"]["queue_full"] == 1


async def test_a_request_waiting_longer_than_queue_timeout_gets_503(router: RouterProcess,
                                                                   farm: list[CountingUpstream]) -> None:
    blue = farm[0]
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100.0}, max_conns_per_instance=1,
                                queue_timeout=0.4))
    busy = asyncio.create_task(get(router.port, "/sleep?s=1.5"))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    late = await get(router.port, "/")
    waited = time.monotonic() - t0
    assert late.status == 503 and 0.35 < waited < 1.0, (late, waited)
    assert "waited 0.4s (queue_timeout)" in late.body.decode(), late.body
    assert (await busy).status == 200
    s = (await stats(router))["tracks"]["blue"]
    assert (s["queue_timeouts"], s["queued"]) == (1, 0)
    assert len(blue.seen) == 1                         # the late request never reached the instance


async def test_a_table_swap_sends_waiting_requests_to_the_new_tables_track(router: RouterProcess,
                                                                           farm: list[CountingUpstream]) -> None:
    blue, green, blue2 = farm
    await router.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100.0}, max_conns_per_instance=1))
    busy = asyncio.create_task(get(router.port, "/sleep?s=1.5"))
    await asyncio.sleep(0.1)
    waiting = [asyncio.create_task(get(router.port, f"/?n={i}")) for i in range(3)]
    await asyncio.sleep(0.2)
    assert (await stats(router))["tracks"]["blue"]["queued"] == 3
    t0 = time.monotonic()
    await router.set(make_table(2, {"blue": [blue], "green": [green]}, {"green": 100.0}, max_conns_per_instance=1))
    answers = await asyncio.gather(*waiting)
    assert time.monotonic() - t0 < 0.6                 # not after the busy request: at the swap
    assert [r.json()["name"] for r in answers] == ["green"] * 3
    assert [s.path for s in green.seen] == ["/?n=0", "/?n=1", "/?n=2"]   # in their order
    assert green.peak == 1 and (await busy).json()["name"] == "blue"
    # a swap that adds instances to the track lets its waiting requests out at once
    busy = asyncio.create_task(get(router.port, "/sleep?s=1.5"))
    await asyncio.sleep(0.1)
    late = asyncio.create_task(get(router.port, "/"))
    await asyncio.sleep(0.2)
    assert not late.done()
    await router.set(make_table(3, {"green": [green, blue2]}, {"green": 100.0}, max_conns_per_instance=1))
    assert (await asyncio.wait_for(late, 0.6)).json()["name"] == "blue2"
    await busy


async def test_a_silent_instance_gets_idempotent_requests_retried_elsewhere_and_no_post(
        router: RouterProcess, farm: list[CountingUpstream]) -> None:
    blue, green = farm[0], farm[1]
    blue.hung = True
    await router.set(make_table(1, {"blue": [blue, green]}, {"blue": 100.0}, per_try_timeout=0.3))
    # two POSTs at once: round-robin puts one on each; the one on the silent instance is not retried
    posts = await asyncio.gather(*(get(router.port, "/", "POST", b"order") for _ in range(2)))
    assert sorted(r.status for r in posts) == [200, 504]
    assert [s.method for s in blue.seen] == ["POST"] and [s.method for s in green.seen] == ["POST"]
    t0 = time.monotonic()
    gets = await asyncio.gather(*(get(router.port, f"/?n={i}") for i in range(6)))
    assert [r.status for r in gets] == [200] * 6 and {r.json()["name"] for r in gets} == {"green"}
    assert time.monotonic() - t0 < 1.5                 # one per-try timeout, not the response timeout
    s = (await stats(router))["upstreams"]
    assert s[blue.upstream.id]["ejected"] and s[blue.upstream.id]["silent"] >= 1
    assert not s[green.upstream.id]["ejected"]
    # back to life: re-admitted once it answers again (not merely accepts connections)
    blue.hung = False
    for _ in range(40):
        if not (await stats(router))["upstreams"][blue.upstream.id]["ejected"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the instance answering again was never re-admitted")



async def test_a_burst_opens_at_most_four_unanswered_connections_per_instance(router: RouterProcess) -> None:
    """An instance that has not accepted yet (its accept queue is where new connections wait) is
    sent at most UNPROVEN_LIMIT (4) new connections, however many requests arrive at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    clients = []
    try:
        table = RoutingTable("shop", 1, {"blue": (Upstream("slow", "127.0.0.1", port),)}, {"blue": 100.0})
        await router.set(table)
        clients = [asyncio.create_task(get(router.port, f"/?n={i}")) for i in range(20)]
        await asyncio.sleep(0.8)
        while True:
            try:
                accepted.append(listener.accept()[0])
            except BlockingIOError:
                break
        assert len(accepted) == 4, len(accepted)
        assert (await stats(router))["tracks"]["blue"]["queued"] == 16
    finally:
        for s in accepted:
            s.close()
        listener.close()
        for c in clients:
            c.cancel()
        await asyncio.gather(*clients, return_exceptions=True)


async def test_a_swap_re_routes_waiting_requests_by_their_user_key(router: RouterProcess,
                                                                   farm: list[CountingUpstream]) -> None:
    blue, green = farm[0], farm[1]
    canary_users = [u for u in (f"user-{i}" for i in range(200)) if user_bucket(u) < 5000][:3]
    stable_users = [u for u in (f"user-{i}" for i in range(200)) if user_bucket(u) >= 5000][:3]
    kw = {"max_conns_per_instance": 1, "sticky_header": "x-user"}
    await router.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100.0}, **kw))
    busy = asyncio.create_task(get(router.port, "/sleep?s=1"))
    await asyncio.sleep(0.1)

    async def as_user(user: str) -> Response:
        c = await RawClient.open(router.port)
        try:
            return await c.request(headers={"x-user": user})
        finally:
            c.close()

    waiting = {u: asyncio.create_task(as_user(u)) for u in canary_users + stable_users}
    await asyncio.sleep(0.2)
    assert (await stats(router))["tracks"]["blue"]["queued"] == 6
    await router.set(make_table(2, {"blue": [blue], "green": [green]}, {"green": 50.0, "blue": 50.0},
                                bucket_order=("green", "blue"), **kw))
    answers = {u: (await t).json()["name"] for u, t in waiting.items()}
    assert answers == {**{u: "green" for u in canary_users}, **{u: "blue" for u in stable_users}}
    await busy
