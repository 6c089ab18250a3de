"""Webhooks end to end: a real daemon posts rollout events to real HTTP receivers run by
the test; a failing receiver is retried with backoff, and a receiver that never answers
does not slow a rollout down."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker

HOOK_TOKEN = "hook-token-5f1c9a"
SHOP_SECRET = "shop-secret-81be42"


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    """A webhook receiver on loopback; `answer(n)` is the status of request n, None: never answer."""

    def __init__(self, answer: Callable[[int], int | None] = lambda n: 200) -> None:
        self.answer = answer
        self.requests: list[Received] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hooks/T0/B0/xyz"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._release.set()
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self.answer(len(self.requests))
                self.requests.append(Received(headers, json.loads(body), time.monotonic()))
                if status is None:
                    await self._release.wait()
                    break
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def events(self) -> list[str]:
        return [r.body.get("event") or r.body["text"] for r in self.requests]

    async def wait_for(self, pred: Callable[[list[Received]], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.requests):
            assert time.monotonic() < deadline, f"receiver got only {self.events()}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def make(answer: Callable[[int], int | None] = lambda n: 200) -> Receiver:
        r = await Receiver(answer).start()
        started.append(r)
        return r

    try:
        yield make
    finally:
        for r in started:
            await r.close()


@pytest.fixture
def secret_daemon(state_dir: Path) -> Iterator[DaemonProcess]:
    dp = DaemonProcess(state_dir, env={"HOOK_TOKEN": HOOK_TOKEN, "SHOP_SECRET": SHOP_SECRET}).start()
    try:
        yield dp
    finally:
        dp.stop()


@pytest.fixture
async def api(secret_daemon: DaemonProcess) -> AsyncIterator[AsyncApiClient]:
    client = AsyncApiClient(secret_daemon.paths, timeout=120)
    try:
        yield client
    finally:
        await client.aclose()


def canary(make_spec: SpecMaker, version: str, name: str, steps: list[Any],
           notifications: dict[str, Any] | None) -> Path:
    changes: dict[str, Any] = {"strategy": {"canary": {"steps": steps}}, "replicas": 1,
                               "run.secret_env": ["SHOP_SECRET"], "notifications": notifications}
    return make_spec(version, name, **changes)


async def deploy(api: AsyncApiClient, spec: Path) -> dict[str, Any]:
    return (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]


async def wait_phase(api: AsyncApiClient, rid: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = (await api.get(f"/v1/rollouts/{rid}"))["rollout"]
        if r["phase"] == phase:
            return r
        assert time.monotonic() < deadline, f"rollout {rid} never got to {phase}: {r}"
        await asyncio.sleep(0.05)


async def test_rollouts_are_told_to_webhooks_with_retries(api: AsyncApiClient, make_spec: SpecMaker,
                                                           receivers: Callable[..., Any]) -> None:
    plain = await receivers()
    slack = await receivers()
    flaky = await receivers(lambda n: 500 if n < 2 else 200)
    notifications = {"backoff": "300ms", "webhooks": [
        {"url": plain.url, "secret_headers": {"Authorization": "HOOK_TOKEN"}},
        {"url": slack.url, "format": "slack", "events": ["rollout.aborted", "rollout.succeeded"]},
        {"url": flaky.url, "events": ["rollout.started"]},
    ]}
    first = await deploy(api, canary(make_spec, "v1", "n1", [{"set_weight": 50}], notifications))
    assert (await api.wait_rollout(first["id"], 60))["phase"] == "succeeded"

    held = await deploy(api, canary(make_spec, "v2", "n2", [{"set_weight": 20}, {"pause": {}}], notifications))
    await wait_phase(api, held["id"], "paused")
    await api.post("/v1/services/shop/abort")
    assert (await api.wait_rollout(held["id"], 60))["phase"] == "aborted"

    good = await deploy(api, canary(make_spec, "v2", "n3", [{"set_weight": 50}], notifications))
    assert (await api.wait_rollout(good["id"], 60))["phase"] == "succeeded"

    await plain.wait_for(lambda rs: sum(r.body["event"] == "rollout.succeeded" for r in rs) == 2)
    mine = {rid: [(r.body["event"], r.body.get("data", {}).get("weight")) for r in plain.requests
                  if r.body["rollout_id"] == rid] for rid in (held["id"], good["id"])}
    assert mine[held["id"]] == [("rollout.started", None), ("rollout.step", 20), ("rollout.paused", None),
                                ("rollout.aborted", None)]
    assert mine[good["id"]] == [("rollout.started", None), ("rollout.step", 50), ("rollout.promoted", None),
                                ("rollout.step", 100), ("rollout.succeeded", None)]
    aborted = next(r for r in plain.requests if r.body["event"] == "rollout.aborted")
    assert aborted.body["service"] == "shop" and aborted.body["phase"] == "aborted"
    assert set(aborted.body) == {"event", "service", "rollout_id", "phase", "message", "data", "ts", "id",
                                 "shipyard_version"}
    assert all(r.headers["authorization"] == HOOK_TOKEN for r in plain.requests)

    await slack.wait_for(lambda rs: len(rs) == 3)
    assert [r.body["text"].split("]")[0] for r in slack.requests] == [
        "[shop: rollout.succeeded", "[shop: rollout.aborted", "[shop: rollout.succeeded"]
    assert f"{held['id']} aborted" in slack.requests[1].body["text"]
    assert all(r.body["blocks"] for r in slack.requests)

    # 500, 500, then 200 for the first notification: three tries, waits of 150-300 ms then 300-600 ms
    await flaky.wait_for(lambda rs: len(rs) == 5)
    tries = [r for r in flaky.requests if r.body["id"] == flaky.requests[0].body["id"]]
    assert len(tries) == 3
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
    assert 0.14 <= gaps[0] < 2 and 0.29 <= gaps[1] < 3, gaps
    assert [r.body["event"] for r in flaky.requests] == ["rollout.started"] * 5

    every = [json.dumps(r.body) for rec in (plain, slack, flaky) for r in rec.requests]
    assert not any(HOOK_TOKEN in b or SHOP_SECRET in b for b in every)
    events = (await api.get("/v1/services/shop/events"))["events"]
    assert not [e for e in events if e["kind"].startswith("notify.")]


async def test_a_receiver_that_never_answers_does_not_slow_rollouts(api: AsyncApiClient, make_spec: SpecMaker,
                                                                    receivers: Callable[..., Any]) -> None:
    hang = await receivers(lambda n: None)
    notifications = {"timeout": "30s", "queue": 2, "webhooks": [{"url": hang.url}]}
    steps = [{"set_weight": 25}, {"set_weight": 50}, {"set_weight": 75}]

    async def timed(version: str, name: str, hooks: dict[str, Any] | None) -> float:
        t0 = time.monotonic()
        r = await deploy(api, canary(make_spec, version, name, steps, hooks))
        final = await api.wait_rollout(r["id"], 60)
        assert final["phase"] == "succeeded", final
        return time.monotonic() - t0

    await timed("v1", "h1", None)                       # builds v1
    await timed("v2", "h2", None)                       # builds v2; both images cached from here on
    hooked = await timed("v1", "h3", notifications)
    plain = await timed("v2", "h4", None)
    assert hang.requests, "the webhook was never called"
    assert hooked < plain * 1.5 + 1.0, (hooked, plain)
    events = (await api.get("/v1/services/shop/events"))["events"]
    assert any(e["kind"] == "notify.dropped" for e in events)


async def test_drift_found_is_told_with_the_live_release_webhooks(api: AsyncApiClient, make_spec: SpecMaker,
                                                                   receivers: Callable[..., Any],
                                                                   state_dir: Path) -> None:
    hook = await receivers()
    spec = make_spec("v1", "d1", replicas=1, notifications={"webhooks": [{"url": hook.url, "events": ["drift.found"]}]})
    r = await deploy(api, spec)
    assert (await api.wait_rollout(r["id"], 60))["phase"] == "succeeded"
    status = await api.get("/v1/services/shop")
    target = state_dir / "images" / "trees" / status["slots"][status["live_slot"]]["image"] / "shop" / "catalog.json"
    os.chmod(target, 0o644)
    target.write_text("[]")
    report = (await api.post("/v1/services/shop/drift", {"mode": "full"}))["report"]
    assert not report["clean"]
    await hook.wait_for(lambda rs: len(rs) >= 1)
    [got] = hook.requests
    assert got.body["event"] == "drift.found" and got.body["rollout_id"] is None
    assert "shop/catalog.json" in got.body["message"] and got.body["data"]["counts"]["content"] >= 1, got.body
