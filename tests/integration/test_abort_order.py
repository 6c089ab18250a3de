"""Issue 13: once an abort is answered, or the rollout reads as ended in the store, no
request is routed to the canary. Real daemon, router and shop instances; users are spread
over the canary's buckets by a distinct X-User-Id on every request, and each request's send
time is compared with the first moment the store (read from its file, as any reader would)
or the API said the rollout had ended."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker

CANARY = {"sticky": {"header": "X-User-Id"}, "analysis": {"min_requests": 20, "interval": "1s"}}
TRIALS = 3
CLIENTS = 6
ENDED = ("succeeded", "failed", "aborted")


def canary_spec(make_spec: SpecMaker, version: str, steps: list[Any]) -> Path:
    return make_spec(version, f"canary-{version}", **{"strategy": {"canary": {**CANARY, "steps": steps}},
                                                      "replicas": 2})


class Users(threading.Thread):
    """One keep-alive connection sending GET / as a new user each time: (send time, version)."""

    def __init__(self, listen: str, name: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.host, port = listen.split(":")
        self.port, self.tag, self.stop = int(port), name, stop
        self.answers: list[tuple[float, str]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic()
                try:
                    conn.request("GET", "/", headers={"X-User-Id": f"{self.tag}-{n}"})
                    resp = conn.getresponse()
                    body = resp.read()
                    self.answers.append((sent, json.loads(body)["version"] if resp.status == 200 else str(resp.status)))
                except (OSError, http.client.HTTPException, ValueError) as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        finally:
            conn.close()


class StoreWatcher(threading.Thread):
    """Reads the rollout's phase from state.db as fast as it can; notes when it first reads an end."""

    def __init__(self, db: Path, rollout_id: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.db, self.rid, self.stop = db, rollout_id, stop
        self.ended_at: float | None = None
        self.phase = ""

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            while not self.stop.is_set() and self.ended_at is None:
                row = conn.execute("SELECT phase FROM rollouts WHERE id=?", (self.rid,)).fetchone()
                if row and row[0] in ENDED:
                    self.ended_at, self.phase = time.monotonic(), row[0]
        finally:
            conn.close()


async def api_ended_at(api: AsyncApiClient, rid: str, out: dict[str, float]) -> None:
    while True:
        r = (await api.get(f"/v1/rollouts/{rid}"))["rollout"]
        if r["phase"] in ENDED:
            out["api"] = time.monotonic()
            return


async def wait_phase(api: AsyncApiClient, rid: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = (await api.get(f"/v1/rollouts/{rid}"))["rollout"]
        if r["phase"] == phase:
            return r
        assert r["phase"] not in ENDED, r
        await asyncio.sleep(0.05)
    raise AssertionError(f"rollout {rid} never reached {phase}")


async def test_no_request_reaches_the_canary_once_an_abort_is_answered_or_stored(
        daemon: DaemonProcess, api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    first = (await api.post("/v1/deploy", {"spec_path": str(canary_spec(make_spec, "v1", [{"set_weight": 50}]))}))
    assert (await api.wait_rollout(first["rollout"]["id"], 90))["phase"] == "succeeded"
    v2 = canary_spec(make_spec, "v2", [{"set_weight": 50}, {"pause": "10m"}])
    late: list[str] = []
    for trial in range(TRIALS):
        rid = (await api.post("/v1/deploy", {"spec_path": str(v2)}))["rollout"]["id"]
        r = await wait_phase(api, rid, "paused")
        assert r["weight"] == 50.0, r
        stop, stop_watch = threading.Event(), threading.Event()
        users = [Users(listen, f"t{trial}c{i}", stop) for i in range(CLIENTS)]
        watcher = StoreWatcher(daemon.paths.db, rid, stop_watch)
        for t in (*users, watcher):
            t.start()
        ended: dict[str, float] = {}
        try:
            await asyncio.sleep(0.5)                          # the canary serves its half of the users
            poller = asyncio.create_task(api_ended_at(api, rid, ended))
            done = (await api.post("/v1/services/shop/abort"))["rollout"]
            answered = time.monotonic()
            await asyncio.wait_for(poller, 30)
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            stop_watch.set()
            for t in (*users, watcher):
                t.join(15)
        assert done["phase"] == "aborted", done
        assert watcher.ended_at is not None and watcher.phase == "aborted"
        cutoff = min(answered, ended["api"], watcher.ended_at)
        answers = [a for u in users for a in u.answers]
        assert not [e for u in users for e in u.errors], [e for u in users for e in u.errors][:5]
        before = [v for sent, v in answers if sent < cutoff]
        after = [v for sent, v in answers if sent > cutoff]
        assert "2" in before and "1" in before, f"trial {trial}: the canary was not serving half the users"
        assert len(after) > 50, f"trial {trial}: too few requests after the end to tell ({len(after)})"
        late += [f"trial {trial}: {v}" for v in after if v != "1"]
        await wait_phase_ended_and_torn_down(api)
    assert not late, f"answered by the canary after the abort was answered or stored: {late[:10]} ({len(late)})"


async def wait_phase_ended_and_torn_down(api: AsyncApiClient, timeout: float = 30) -> None:
    """The canary's instances are gone before the next trial deploys a new one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await api.get("/v1/services/shop")
        canary = [s for name, s in status["slots"].items() if name != status["live_slot"]]
        if status["rollout"] is None and all(not s["instances"] for s in canary):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the aborted canary was not torn down: {status}")
