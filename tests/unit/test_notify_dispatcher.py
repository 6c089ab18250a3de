"""The dispatcher against a real HTTP receiver on loopback and a real state store: order,
retries with backoff, giving up, dropping the oldest when a receiver is down, secrets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipyard.notify import Dispatcher
from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.rollout.records import ServiceRecord, Slot, SlotState
from shipyard.spec import parse_spec
from shipyard.state.sqlite import SqliteStore


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    """A minimal HTTP/1.1 webhook receiver; `answer(n)` gives the status of request n
    (from 0), or None to never answer."""

    def __init__(self, answer: Callable[[int], int | None] = lambda n: 200) -> None:
        self.answer = answer
        self.requests: list[Received] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook/secret-path"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._release.set()
        for w in list(self._writers):
            w.close()
        for _ in range(100):
            if not self._writers:
                break
            await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                n = len(self.requests)
                self.requests.append(Received(head[0].split()[1], headers, json.loads(body), time.monotonic()))
                status = self.answer(n)
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

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, expected {count}"
            await asyncio.sleep(0.01)
        return self.requests


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        await r.close()


class Harness:
    def __init__(self, store: SqliteStore, env: dict[str, str]) -> None:
        self.store = store
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.sleep(0)

        self.dispatcher = Dispatcher(store, env, sleep=sleep, rng=lambda: 1.0)

    def rollout(self, notifications: str, strategy: str = "canary", rid: str = "shop-1", extra: str = "") -> str:
        spec = parse_spec(f"service: shop\nlisten: 127.0.0.1:8080\nrun: {{command: [x]{extra}}}\n"
                          f"notifications: {notifications}\n", "shop.yaml", Path("/tmp"))
        r = Rollout(rid, "shop", Kind.DEPLOY, Phase.PROGRESSING, "green", "blue", None, None, strategy=strategy)
        self.store.put_rollout(r, spec.to_json_dict())
        return rid

    def emit(self, kind: str, message: str = "", rollout_id: str | None = "shop-1", **data: Any) -> None:
        self.dispatcher.offer(self.store.add_event("shop", kind, message or kind, rollout_id, data or None))

    def events(self, kind: str) -> list[str]:
        return [e.message for e in self.store.events("shop") if e.kind == kind]


@pytest.fixture
async def harness(store: SqliteStore) -> AsyncIterator[Harness]:
    h = Harness(store, {"HOOK_TOKEN": "tok-abcdef-123", "API_KEY": "key-987654"})
    h.dispatcher.start()
    try:
        yield h
    finally:
        await h.dispatcher.close()


async def test_rollout_events_arrive_in_order_with_the_json_body(harness: Harness, receiver: Receiver) -> None:
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}'}}]}}")
    harness.emit("rollout.created", "deploy shop-1 starts")
    harness.emit("instance.started")                       # not a notification
    harness.emit("canary.weight", weight=10.0, slot="green")
    harness.emit("rollout.phase", phase="paused")
    harness.emit("rollout.phase", phase="promoting")
    harness.emit("rollout.succeeded", phase="succeeded")
    got = await receiver.wait_for(5)
    await asyncio.sleep(0.1)
    assert len(receiver.requests) == 5
    assert [r.body["event"] for r in got] == ["rollout.started", "rollout.step", "rollout.paused",
                                              "rollout.promoted", "rollout.succeeded"]
    first = got[0]
    assert first.path == "/hook/secret-path" and first.headers["content-type"] == "application/json"
    assert first.body["service"] == "shop" and first.body["rollout_id"] == "shop-1"
    assert first.body["message"] == "deploy shop-1 starts" and first.body["phase"] == "progressing"
    assert got[1].body["data"] == {"weight": 10.0, "slot": "green"}


async def test_only_chosen_events_in_slack_format(harness: Harness, receiver: Receiver) -> None:
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}', format: slack, events: [rollout.aborted]}}]}}")
    harness.emit("rollout.created")
    harness.emit("rollout.aborted", "deploy shop-1 aborted: by hand", phase="aborted")
    [got] = await receiver.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(receiver.requests) == 1
    assert got.body["text"] == "[shop: rollout.aborted] deploy shop-1 aborted: by hand"
    assert got.body["blocks"][0]["type"] == "section"


async def test_server_errors_are_retried_with_growing_waits(harness: Harness, receiver: Receiver) -> None:
    receiver.answer = lambda n: 500 if n < 3 else 200
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}'}}], backoff: 100ms}}")
    harness.emit("rollout.created")
    got = await receiver.wait_for(4)
    assert {r.body["id"] for r in got} == {got[0].body["id"]}      # the same notification each time
    assert harness.sleeps == [0.1, 0.2, 0.4]
    await asyncio.sleep(0.05)
    assert harness.events("notify.failed") == []
    assert next(iter(harness.dispatcher.stats().values()))["sent"] == 1


async def test_gives_up_after_the_retries_and_says_so(harness: Harness, receiver: Receiver) -> None:
    receiver.answer = lambda n: 503
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}'}}], retries: 2, backoff: 10ms}}")
    harness.emit("rollout.created")
    await receiver.wait_for(3)
    for _ in range(100):
        if harness.events("notify.failed"):
            break
        await asyncio.sleep(0.01)
    assert harness.events("notify.failed") == [
        f"webhook {url.split('/hook')[0]}/…: rollout.started not delivered: HTTP 503 after 3 attempts"]
    await asyncio.sleep(0.1)
    assert len(receiver.requests) == 3


async def test_client_errors_are_not_retried(harness: Harness, receiver: Receiver) -> None:
    receiver.answer = lambda n: 404
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}'}}]}}")
    harness.emit("rollout.created")
    await receiver.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(receiver.requests) == 1 and harness.sleeps == []
    assert "HTTP 404 after 1 attempt" in harness.events("notify.failed")[0]


async def test_a_hanging_receiver_costs_the_caller_nothing_and_drops_the_oldest(harness: Harness,
                                                                                receiver: Receiver) -> None:
    receiver.answer = lambda n: None
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}'}}], timeout: 30s, queue: 2}}")
    t0 = time.perf_counter()
    for i in range(6):
        harness.emit("canary.weight", weight=float(i))
        await asyncio.sleep(0.02)                      # let the intake hand each one over
    took = time.perf_counter() - t0
    assert took < 0.5
    await receiver.wait_for(1)
    dropped = harness.events("notify.dropped")
    # one in flight (hanging), two waiting, the other three dropped oldest first
    assert len(dropped) == 3 and "3 dropped so far" in dropped[-1], dropped
    stats = next(iter(harness.dispatcher.stats().values()))
    assert stats["dropped"] == 3 and stats["queued"] == 2
    t0 = time.perf_counter()
    await harness.dispatcher.close()                   # does not wait for the receiver either
    assert time.perf_counter() - t0 < 3


async def test_a_timeout_is_retried(harness: Harness, receiver: Receiver) -> None:
    receiver.answer = lambda n: None if n == 0 else 200
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}'}}], timeout: 200ms, backoff: 10ms}}")
    harness.emit("rollout.created")
    got = await receiver.wait_for(2)
    assert got[1].at - got[0].at >= 0.15
    assert harness.sleeps == [0.01]


async def test_secrets_go_in_headers_never_in_bodies(harness: Harness, receiver: Receiver) -> None:
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}', headers: {{X-Team: web}}, "
                    "secret_headers: {Authorization: HOOK_TOKEN}}]}", extra=", secret_env: [API_KEY]")
    harness.emit("rollout.created", "leaked key-987654 and tok-abcdef-123 into a message",
                 env={"API_KEY": "key-987654"}, password="pw")
    [got] = await receiver.wait_for(1)
    assert got.headers["authorization"] == "tok-abcdef-123" and got.headers["x-team"] == "web"
    raw = json.dumps(got.body)
    assert "key-987654" not in raw and "tok-abcdef-123" not in raw and '"pw"' not in raw
    assert got.body["message"] == "leaked *** and *** into a message"


async def test_a_missing_secret_sends_nothing(harness: Harness, receiver: Receiver) -> None:
    url = await receiver.start()
    harness.rollout(f"{{webhooks: [{{url: '{url}', secret_headers: {{Authorization: NOT_SET}}}}]}}")
    harness.emit("rollout.created")
    for _ in range(100):
        if harness.events("notify.failed"):
            break
        await asyncio.sleep(0.01)
    assert "secret NOT_SET is not set" in harness.events("notify.failed")[0]
    assert receiver.requests == []


async def test_drift_uses_the_live_release_spec(harness: Harness, receiver: Receiver, store: SqliteStore) -> None:
    url = await receiver.start()
    spec = parse_spec(f"service: shop\nlisten: 127.0.0.1:8080\nrun: {{command: [x]}}\n"
                      f"notifications: {{webhooks: [{{url: '{url}', events: [drift.found]}}]}}\n",
                      "shop.yaml", Path("/tmp"))
    harness.emit("drift.found", "no spec, no webhook", rollout_id=None)
    await asyncio.sleep(0.1)
    store.put_service(ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue",
                                    slots={"blue": Slot(SlotState.LIVE, "img", spec.to_json_dict()),
                                           "green": Slot()}))
    harness.emit("drift.cleared", rollout_id=None)
    harness.emit("drift.found", "file app.py changed", rollout_id=None)
    [got] = await receiver.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(receiver.requests) == 1
    assert got.body["event"] == "drift.found" and got.body["message"] == "file app.py changed"
    assert got.body["rollout_id"] is None

