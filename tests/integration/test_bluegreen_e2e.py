"""Blue-green end to end: a real daemon, real shop processes, the real router, real HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker, deploy


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_deploy_switch_rollback_and_refuse_under_traffic(api: AsyncApiClient, make_spec: SpecMaker,
                                                               listen: str, kind: str, daemon: DaemonProcess) -> None:
    """One suite, two routers: the spec's router.kind picks the data plane."""
    def release(version: str) -> Path:
        return make_spec(version, **{"router.kind": kind})
    v1 = await deploy(api, release("v1"))
    haproxy_cfg = daemon.paths.routers / "haproxy" / "haproxy.cfg"
    assert haproxy_cfg.exists() == (kind == "haproxy")
    assert v1["phase"] == "succeeded", v1
    async with Traffic(f"http://{listen}", clients=16, pause=0.002) as traffic:
        await asyncio.sleep(0.5)
        t_v2 = time.monotonic()
        v2 = await deploy(api, release("v2"))
        assert v2["phase"] == "succeeded", v2
        assert v2["target_slot"] != v1["target_slot"]
        await asyncio.sleep(0.3)
        assert traffic.settled_at("2", t_v2) is not None

        status = await api.get("/v1/services/shop")
        assert status["live_slot"] == v2["target_slot"]
        assert status["slots"][v1["target_slot"]]["state"] == "warm"
        old_pids = {i["pid"] for i in status["slots"][v1["target_slot"]]["instances"]}
        assert len(old_pids) == 2

        t_rb = time.monotonic()
        rb = (await api.post("/v1/services/shop/rollback"))["rollout"]
        assert rb["phase"] == "succeeded" and rb["kind"] == "rollback", rb
        call = time.monotonic() - t_rb
        await asyncio.sleep(0.3)
        settle = traffic.settled_at("1", t_rb)
        assert settle is not None and settle <= call + 0.05, (settle, call)
        status = await api.get("/v1/services/shop")
        assert status["live_slot"] == v1["target_slot"]
        # a switch back, not a redeploy: the very same processes serve again
        assert {i["pid"] for i in status["slots"][v1["target_slot"]]["instances"]} == old_pids

        t_v3 = time.monotonic()
        v3 = await deploy(api, release("v3"))
        assert v3["phase"] == "failed", v3
        assert "preview check GET / on slot" in v3["reason"] and "500" in v3["reason"]
        await asyncio.sleep(0.2)
        assert set(traffic.versions(since=t_v3)) == {"1"}
    assert traffic.failures() == []
    assert len(traffic.samples) > 500
    status = await api.get("/v1/services/shop")
    assert status["live_slot"] == v1["target_slot"]
    failed_slot = v3["target_slot"]
    assert status["slots"][failed_slot]["state"] == "idle" and status["slots"][failed_slot]["instances"] == []
    events = (await api.get(f"/v1/rollouts/{v3['id']}"))["events"]
    assert any("torn down" in e["message"] for e in events)


async def test_second_deploy_is_refused_and_promote_switches(api: AsyncApiClient, make_spec: SpecMaker,
                                                             listen: str) -> None:
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    manual = make_spec("v2", "v2-manual", **{"strategy.blue_green.auto_promote": False})
    r = (await api.post("/v1/deploy", {"spec_path": str(manual)}))["rollout"]
    for _ in range(200):
        r = (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]
        if r["phase"] == "awaiting_promotion":
            break
        await asyncio.sleep(0.05)
    assert r["phase"] == "awaiting_promotion"
    try:
        await api.post("/v1/deploy", {"spec_path": str(make_spec("v1"))})
        raise AssertionError("a second deploy must be refused")
    except Exception as e:  # ConflictError from the client
        assert "already has a rollout in progress" in str(e) and r["id"] in str(e)
    async with Traffic(f"http://{listen}", clients=4) as traffic:
        await asyncio.sleep(0.3)
        assert set(traffic.versions()) == {"1"}          # waiting for promotion: users still on v1
        done = (await api.post("/v1/services/shop/promote"))["rollout"]
        assert done["phase"] == "succeeded"
        t = time.monotonic()
        await asyncio.sleep(0.3)
        assert set(traffic.versions(since=t)) == {"2"}
    assert traffic.failures() == []


async def test_rollback_before_the_switch_aborts(api: AsyncApiClient, make_spec: SpecMaker) -> None:
    first = await deploy(api, make_spec("v1"))
    manual = make_spec("v2", "v2-manual", **{"strategy.blue_green.auto_promote": False})
    r = (await api.post("/v1/deploy", {"spec_path": str(manual)}))["rollout"]
    for _ in range(200):
        if (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["phase"] == "awaiting_promotion":
            break
        await asyncio.sleep(0.05)
    rb = (await api.post("/v1/services/shop/rollback"))["rollout"]
    assert rb["id"] == r["id"] and rb["phase"] == "aborted"
    status = await api.get("/v1/services/shop")
    assert status["live_slot"] == first["target_slot"]
    assert status["slots"][r["target_slot"]]["instances"] == []


async def test_cold_rollback_after_scale_down_delay(api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    quick = {"strategy.blue_green.scale_down_delay": "1s"}
    await deploy(api, make_spec("v1", "v1q", **quick))
    v2 = await deploy(api, make_spec("v2", "v2q", **quick))
    assert v2["phase"] == "succeeded"
    for _ in range(100):
        status = await api.get("/v1/services/shop")
        if status["slots"][v2["previous_slot"]]["state"] == "idle":
            break
        await asyncio.sleep(0.1)
    assert status["slots"][v2["previous_slot"]]["instances"] == []
    rb = (await api.post("/v1/services/shop/rollback"))["rollout"]
    rb = await api.wait_rollout(rb["id"])
    assert rb["phase"] == "succeeded" and rb["kind"] == "rollback"
    async with Traffic(f"http://{listen}", clients=2) as traffic:
        await asyncio.sleep(0.3)
    assert set(traffic.versions()) == {"1"}


async def test_never_healthy_release_is_refused(api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    await deploy(api, make_spec("v1"))
    bad = make_spec("v2", "v2-bad-health", **{"health.path": "/nope", "health.start_timeout": "2s"})
    async with Traffic(f"http://{listen}", clients=4) as traffic:
        r = await deploy(api, bad)
    assert r["phase"] == "failed"
    assert "did not become healthy" in r["reason"] and "/nope" in r["reason"], r["reason"]
    assert set(traffic.versions()) == {"1"} and traffic.failures() == []
    status = await api.get("/v1/services/shop")
    assert status["slots"][r["target_slot"]]["instances"] == []
