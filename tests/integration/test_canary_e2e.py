"""Canary releases end to end: a real daemon, real shop instances, the real router, real
users (distinct ids in a sticky header), and the analysis deciding on live metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker
from support.routers import haproxy_worker_pid

CANARY: dict[str, Any] = {
    "sticky": {"header": "X-User-Id"},
    "analysis": {"min_requests": 20, "interval": "1s"},
}


def canary_spec(make_spec: SpecMaker, version: str, name: str, steps: list[Any],
                release: str | None = None, kind: str = "embedded") -> Path:
    changes: dict[str, Any] = {"strategy": {"canary": {**CANARY, "steps": steps}}, "replicas": 2,
                               "router.kind": kind}
    if release is not None:
        changes["build.files"] = {"release.toml": release}
    return make_spec(version, name, **changes)


async def deploy(api: AsyncApiClient, spec: Path) -> dict:
    return (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]


async def wait_for(api: AsyncApiClient, rid: str, pred, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    r: dict = {}
    while time.monotonic() < deadline:
        r = (await api.get(f"/v1/rollouts/{rid}"))["rollout"]
        if pred(r):
            return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"rollout {rid} never got there; last: {r}")


async def first_release(api: AsyncApiClient, make_spec: SpecMaker, kind: str = "embedded") -> None:
    r = await deploy(api, canary_spec(make_spec, "v1", "c1", [{"set_weight": 50}], kind=kind))
    r = await api.wait_rollout(r["id"], 60)
    assert r["phase"] == "succeeded" and "first release" in r["reason"], r


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_good_canary_walks_every_step_to_full(api: AsyncApiClient, make_spec: SpecMaker, listen: str,
                                                    kind: str, daemon: DaemonProcess) -> None:
    """On HAProxy the whole canary (start, weights, promotion, the old release drained) is Runtime
    API changes: the worker that served the first release serves to the end (no reload)."""
    await first_release(api, make_spec, kind)
    worker = haproxy_worker_pid(daemon.paths.root) if kind == "haproxy" else None
    steps = [{"set_weight": 10}, {"pause": "2s"}, {"set_weight": 50}, {"analysis": {"duration": "3s"}}]
    async with Traffic(f"http://{listen}", clients=8, pause=0.01, users=500) as traffic:
        r = await deploy(api, canary_spec(make_spec, "v2", "c2", steps, kind=kind))
        final = await api.wait_rollout(r["id"], 90)
        t_done = time.monotonic()
        await asyncio.sleep(0.5)
    assert final["phase"] == "succeeded", final
    assert traffic.failures() == []
    events = (await api.get(f"/v1/rollouts/{r['id']}"))["events"]
    weights = [e["data"]["weight"] for e in events if e["kind"] == "canary.weight"]
    assert weights == [10, 50, 100]
    assert set(traffic.versions(since=t_done)) == {"2"}
    status = await api.get("/v1/services/shop")
    assert status["live_slot"] == final["target_slot"]
    assert status["slots"][final["previous_slot"]]["instances"] == []      # the old release drained and stopped
    if worker is not None:
        assert haproxy_worker_pid(daemon.paths.root) == worker


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_erroring_canary_is_aborted_automatically(api: AsyncApiClient, make_spec: SpecMaker,
                                                       listen: str, kind: str) -> None:
    """The judge reads the router's series: on HAProxy, its own per-request logs."""
    await first_release(api, make_spec, kind)
    bad = 'version = "2"\ngreeting = "hello"\nerror_rate = 0.1\n'
    async with Traffic(f"http://{listen}", clients=8, pause=0.005, users=2000) as traffic:
        r = await deploy(api, canary_spec(make_spec, "v2", "bad", [{"set_weight": 20}, {"pause": "120s"}], bad,
                                          kind=kind))
        took = time.monotonic()
        final = await api.wait_rollout(r["id"], 120)
        took = time.monotonic() - took
        after = time.monotonic()
        await asyncio.sleep(1.0)
    assert final["phase"] == "failed", final
    assert "analysis failed" in final["reason"] and "error" in final["reason"], final["reason"]
    assert took < 60
    assert set(traffic.versions(since=after)) == {"1"}          # 0 % canary afterwards
    doc = await api.get(f"/v1/rollouts/{r['id']}")
    assert any(v["status"] == "failed" for v in doc["analysis"]["verdicts"])
    status = await api.get("/v1/services/shop")
    assert status["slots"][final["target_slot"]]["instances"] == []


async def test_slower_canary_is_aborted_by_the_latency_comparison(api: AsyncApiClient, make_spec: SpecMaker,
                                                                  listen: str) -> None:
    await first_release(api, make_spec)
    slow = 'version = "2"\ngreeting = "hello"\nextra_latency_ms = 50\n'
    async with Traffic(f"http://{listen}", clients=16, pause=0.005, users=2000):
        r = await deploy(api, canary_spec(make_spec, "v2", "slow", [{"set_weight": 20}, {"pause": "120s"}], slow))
        final = await api.wait_rollout(r["id"], 120)
    assert final["phase"] == "failed", final
    assert "latency" in final["reason"], final["reason"]


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_users_keep_their_track_and_pauses_wait_for_promote(api: AsyncApiClient, make_spec: SpecMaker,
                                                                 listen: str, kind: str) -> None:
    await first_release(api, make_spec, kind)
    steps = [{"set_weight": 5}, {"pause": {}}, {"set_weight": 25}, {"pause": {}}, {"set_weight": 50}, {"pause": {}}]
    r = await deploy(api, canary_spec(make_spec, "v2", "gates", steps, kind=kind))
    users = [f"user-{i}" for i in range(1000)]
    on_canary: set[str] = set()
    # 10 s per request; the wait for one of the 32 connections is the client's own queue, not the router's
    async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=httpx.Timeout(10, pool=None),
                                 limits=httpx.Limits(max_connections=32)) as c:
        for weight, step in ((5, 1), (25, 3), (50, 5)):
            r = await wait_for(api, r["id"], lambda x, s=step: x["phase"] == "paused" and x["step_index"] == s)
            assert r["weight"] == weight and r["hold"] == "promote"
            await asyncio.sleep(1.5)
            assert (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["step_index"] == step   # still waiting

            async def version(u: str) -> str:
                resp = await c.get("/", headers={"X-User-Id": u})
                assert resp.status_code == 200
                return resp.headers["x-shop-version"]
            got = dict(zip(users, await asyncio.gather(*(version(u) for u in users)), strict=True))
            now = {u for u, v in got.items() if v == "2"}
            if not on_canary <= now:
                events = (await api.get("/v1/services/shop/events"))["events"][-25:]
                raise AssertionError(f"{len(on_canary - now)} users went back from canary to stable at {weight}%:\n"
                                     + "\n".join(f"{e['kind']}: {e['message']}" for e in events))
            assert abs(len(now) / len(users) - weight / 100) < 0.05, (len(now), weight)
            on_canary = now
            again = await asyncio.gather(*(version(u) for u in users[:200]))
            assert all((v == "2") == (u in now) for u, v in zip(users[:200], again, strict=True))
            await api.post("/v1/services/shop/promote", {})
    final = await api.wait_rollout(r["id"], 60)
    assert final["phase"] == "succeeded"


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_daemon_restart_mid_canary_resumes(state_dir: Path, make_spec: SpecMaker, listen: str,
                                                 kind: str) -> None:
    """The data plane serves the split while no daemon runs; the new daemon re-adopts it."""
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    try:
        await first_release(api, make_spec, kind)
        r = await deploy(api, canary_spec(make_spec, "v2", "resume", [{"set_weight": 30}, {"pause": {}}], kind=kind))
        r = await wait_for(api, r["id"], lambda x: x["phase"] == "paused")
        async with Traffic(f"http://{listen}", clients=4, users=300) as traffic:
            daemon.kill()
            await api.aclose()
            await asyncio.sleep(0.5)
            daemon = DaemonProcess(state_dir).start()
            api = AsyncApiClient(daemon.paths)
            again = (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]
            assert (again["phase"], again["weight"], again["hold"]) == ("paused", 30, "promote")
            events = (await api.get("/v1/services/shop/events"))["events"]
            assert not [e for e in events if e["kind"] == "router.restarted"], events   # re-adopted, not replaced
            await asyncio.sleep(0.5)
            assert set(traffic.versions()) == {"1", "2"}        # the split held while the daemon was away
            await api.post("/v1/services/shop/promote", {})
            final = await api.wait_rollout(r["id"], 60)
        assert final["phase"] == "succeeded"
        assert traffic.failures() == []
    finally:
        await api.aclose()
        daemon.stop()


async def test_pause_resume_abort_and_retry(api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    await first_release(api, make_spec)
    steps = [{"set_weight": 20}, {"pause": "60s"}, {"set_weight": 40}, {"pause": {}}]
    r = await deploy(api, canary_spec(make_spec, "v2", "ctl", steps))
    r = await wait_for(api, r["id"], lambda x: x["phase"] == "paused" and x["hold"] == "timer")
    paused = (await api.post("/v1/services/shop/pause"))["rollout"]
    assert (paused["phase"], paused["hold"], paused["weight"]) == ("paused", "user", 20)
    resumed = (await api.post("/v1/services/shop/resume"))["rollout"]
    assert resumed["step_index"] == 1 and resumed["hold"] == "timer"      # the interrupted pause starts again
    aborted = (await api.post("/v1/services/shop/abort"))["rollout"]
    assert aborted["phase"] == "aborted" and aborted["weight"] == 0
    async with httpx.AsyncClient(base_url=f"http://{listen}") as c:
        seen = {(await c.get("/", headers={"X-User-Id": f"u{i}"})).headers["x-shop-version"] for i in range(200)}
    assert seen == {"1"}
    again = (await api.post("/v1/services/shop/retry"))["rollout"]
    assert again["id"] != r["id"] and again["image_id"] == aborted["image_id"]
    again = await wait_for(api, again["id"], lambda x: x["phase"] == "paused" and x["hold"] == "timer")
    done = (await api.post("/v1/services/shop/promote", {"full": True}))["rollout"]
    assert done["phase"] in ("promoting", "switching", "succeeded")
    final = await api.wait_rollout(again["id"], 60)
    assert final["phase"] == "succeeded"


async def test_abort_decided_just_before_a_crash_is_finished_after_restart(state_dir: Path, make_spec: SpecMaker,
                                                                          listen: str) -> None:
    """The rollout is stored as failed first, then its canary is torn down: a daemon killed
    in between must finish the teardown when it comes back, not leave the canary serving."""
    import json
    import sqlite3
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    try:
        await first_release(api, make_spec)
        r = await deploy(api, canary_spec(make_spec, "v2", "crash", [{"set_weight": 40}, {"pause": {}}]))
        r = await wait_for(api, r["id"], lambda x: x["phase"] == "paused")
        daemon.kill()
        await api.aclose()
        db = sqlite3.connect(daemon.paths.db)
        doc = json.loads(db.execute("SELECT data FROM rollouts WHERE id=?", (r["id"],)).fetchone()[0])
        doc.update(phase="failed", reason="analysis failed (simulated crash right after the decision)")
        db.execute("UPDATE rollouts SET phase='failed', data=? WHERE id=?", (json.dumps(doc), r["id"]))
        db.commit()
        db.close()
        daemon = DaemonProcess(state_dir).start()
        api = AsyncApiClient(daemon.paths)
        status = await api.get("/v1/services/shop")
        assert status["slots"][r["target_slot"]]["state"] == "idle"
        assert status["slots"][r["target_slot"]]["instances"] == []
        async with httpx.AsyncClient(base_url=f"http://{listen}") as c:
            seen = {(await c.get("/", headers={"X-User-Id": f"u{i}"})).headers["x-shop-version"] for i in range(100)}
        assert seen == {"1"}
    finally:
        await api.aclose()
        daemon.stop()
