"""Canary routing through a real router process: users (not requests) are split, and
raising the canary's weight only ever moves users from stable to canary."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_router_support import (
    ROUTER_KINDS,
    RawClient,
    RouterProcess,
    TestUpstream,
    make_table,
    running_kind,
    running_router,
    short_tmpdir,
    track,
    upstreams,
)

from shipyard.errors import RouterError
from shipyard.router.table import RoutingTable, user_bucket

pytestmark = pytest.mark.timeout(60)

USERS = 1000
WALK = (0.5, 1, 5, 25, 50, 100)
CONCURRENCY = 24


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


@pytest.fixture
async def farm():
    async with upstreams("stable", "canary") as servers:
        yield servers


@pytest.fixture(params=ROUTER_KINDS)
async def router(workdir: Path, request: pytest.FixtureRequest):
    """Each test of this suite runs against both routers (bucket hash, aliases, preview)."""
    async with running_kind(request.param, workdir) as r:
        yield r


@pytest.fixture
async def embedded(workdir: Path):
    async with running_router(workdir) as r:
        yield r


def canary_table(version: int, farm: list[TestUpstream], weight: float, **kw: object) -> RoutingTable:
    stable, canary = farm
    return make_table(version, {"blue": [stable], "green": [canary]}, {"green": weight, "blue": 100 - weight},
                      bucket_order=("green", "blue"), aliases={"canary": "green", "stable": "blue"}, **kw)


async def _each(items: list[str], call: Callable[[str], Awaitable[str]]) -> dict[str, str]:
    """The upstream that served each item, with CONCURRENCY requests in flight."""
    out: dict[str, str] = {}
    queue = list(items)

    async def worker() -> None:
        while queue:
            item = queue.pop()
            out[item] = await call(item)
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return out


async def walk(router: RouterProcess, farm: list[TestUpstream], users: list[str], key_of: str,
               served: Callable[[str], Awaitable[str]], **sticky: object) -> None:
    """Raise the canary's weight step by step; at each step every user is where their bucket
    says, none went back to stable, and the canary's share is within binomial tolerance."""
    on_canary: set[str] = set()
    for version, w in enumerate(WALK, start=1):
        await router.set(canary_table(version, farm, w, **sticky))
        got = await _each(users, served)
        assert set(got.values()) <= {"stable", "canary"}
        now = {u for u, name in got.items() if name == "canary"}
        assert on_canary <= now, f"{len(on_canary - now)} users went back to stable at {w}% ({key_of})"
        assert now == {u for u in users if user_bucket(u) < w * 100}, f"bucketing differs at {w}% ({key_of})"
        p = w / 100
        tolerance = 5 * (len(users) * p * (1 - p)) ** 0.5 + 1
        assert abs(len(now) - len(users) * p) <= tolerance, (w, len(now), key_of)
        on_canary = now
    assert on_canary == set(users)


async def prime(router: RouterProcess, farm: list[TestUpstream], **sticky: object) -> None:
    """The service's first table before it takes traffic, as the daemon pushes it: on HAProxy the
    sticky key's names are configuration, so a first table that sets them reloads it (and a
    connection already open on the worker before would be closed after its next response)."""
    await router.set(canary_table(0, farm, 0, **sticky))


async def test_users_by_header_only_ever_move_to_the_canary(router: RouterProcess,
                                                           farm: list[TestUpstream]) -> None:
    await prime(router, farm, sticky_header="X-User-Id", sticky_cookie="uid")
    clients = [await RawClient.open(router.port) for _ in range(CONCURRENCY)]
    free = list(clients)
    try:
        async def served(user: str) -> str:
            c = free.pop()
            try:
                r = await c.request(headers={"X-User-Id": user})
            finally:
                free.append(c)
            assert r.status == 200, r
            return str(r.json()["name"])
        users = [f"user-{i}" for i in range(USERS)]
        await walk(router, farm, users, "header", served, sticky_header="X-User-Id", sticky_cookie="uid")
    finally:
        for c in clients:
            c.close()


async def test_users_by_cookie_only_ever_move_to_the_canary(router: RouterProcess,
                                                           farm: list[TestUpstream]) -> None:
    await prime(router, farm, sticky_header="X-User-Id", sticky_cookie="uid")
    clients = [await RawClient.open(router.port) for _ in range(CONCURRENCY)]
    free = list(clients)
    try:
        async def served(user: str) -> str:
            c = free.pop()
            try:  # an empty sticky header does not count as a key: the cookie decides
                r = await c.request(headers={"X-User-Id": "", "Cookie": f"theme=dark; uid={user}; x=1"})
            finally:
                free.append(c)
            assert r.status == 200, r
            return str(r.json()["name"])
        users = [f"cookie-user-{i}" for i in range(USERS)]
        await walk(router, farm, users, "cookie", served, sticky_header="X-User-Id", sticky_cookie="uid")
    finally:
        for c in clients:
            c.close()


async def test_users_by_client_address_only_ever_move_to_the_canary(router: RouterProcess,
                                                                   farm: list[TestUpstream]) -> None:
    """1,000 loopback source addresses (127.0.1.1 ...), each a new connection per step; a
    forged X-Forwarded-For is ignored."""
    async def served(address: str) -> str:
        c = await RawClient.open(router.port, source=address)
        try:
            r = await c.request(headers={"X-Forwarded-For": "10.9.9.9"})
        finally:
            c.close()
        assert r.status == 200, r
        return str(r.json()["name"])
    addresses = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(USERS)]
    await walk(router, farm, addresses, "address", served, sticky_client_address=True)


async def test_aliases_force_the_track_and_keyless_requests_split_per_request(
        router: RouterProcess, farm: list[TestUpstream]) -> None:
    await router.set(canary_table(1, farm, 30, sticky_header="X-User-Id"))
    c = await RawClient.open(router.port)
    try:
        for override, expected in (("canary", "canary"), ("stable", "stable"), ("green", "canary"),
                                   ("blue", "stable")):
            for user in ("u1", "u2", "u3", "u4", "u5"):  # the override beats the user's bucket
                r = await c.request(headers={**track(override), "X-User-Id": user})
                assert r.json()["name"] == expected, (override, user)
        unknown = await c.request(headers={**track("nope"), "X-User-Id": "u1"})
        assert unknown.json()["name"] == ("canary" if user_bucket("u1") < 3000 else "stable")
        # no key at all: a weighted draw per request, so one connection sees both tracks
        got = Counter()
        for _ in range(800):
            got[(await c.request()).json()["name"]] += 1
        assert abs(got["canary"] - 240) <= 5 * (800 * 0.3 * 0.7) ** 0.5, got
        stats = (await router.client.stats())["tracks"]
        assert stats["green"]["requests"] == got["canary"] + 10 + (user_bucket("u1") < 3000)
    finally:
        c.close()


async def test_weights_in_hundredths_and_refusals(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    """The embedded router's control protocol refuses what RoutingTable refuses (HAProxy is only
    ever given tables that were built, so it has no such wire to test)."""
    router = embedded
    await router.set(canary_table(1, farm, 0.5))
    assert (await router.client.get_table()).weights == {"green": 0.5, "blue": 99.5}  # type: ignore[union-attr]
    await router.set(canary_table(2, farm, 99.5))
    table = canary_table(3, farm, 1).to_dict()
    with pytest.raises(RouterError) as info:
        await router.client._call({"op": "set_table", "table": {**table, "weights": {"green": 0.001,
                                                                                    "blue": 99.999}}})
    assert info.value.message == ("the router refused set_table: invalid table: weight 0.001 of track 'green' "
                                  "is finer than 0.01 (users are split into 10,000 buckets): use a multiple of 0.01")
    with pytest.raises(RouterError, match=r"invalid table: track weights must add up to 100, got 99.99 "
                                          r"\(blue=49.99, green=50\)"):
        await router.client._call({"op": "set_table", "table": {**table, "weights": {"green": 50, "blue": 49.99}}})
    assert (await router.client.get_table()).version == 2  # type: ignore[union-attr]
    # a 99.5 % canary serves (almost) everyone: a user in the last 0.5 % stays on stable
    last = next(f"u{i}" for i in range(10000) if user_bucket(f"u{i}") >= 9950)
    await router.set(canary_table(4, farm, 99.5, sticky_header="X-User-Id"))
    c = await RawClient.open(router.port)
    try:
        assert (await c.request(headers={"X-User-Id": last})).json()["name"] == "stable"
        assert (await c.request(headers={"X-User-Id": "u-first"})).json()["name"] == (
            "canary" if user_bucket("u-first") < 9950 else "stable")
    finally:
        c.close()
