"""Faults: the daemon, the router or an instance dies; shipyard recovers by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker, deploy
from support.routers import router_pid


async def wait_phase(api: AsyncApiClient, rid: str, phase: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = (await api.get(f"/v1/rollouts/{rid}"))["rollout"]
        if r["phase"] == phase:
            return r
        await asyncio.sleep(0.05)
    raise AssertionError(f"rollout {rid} never reached {phase}; last {r['phase']}")


async def test_daemon_killed_while_awaiting_promotion_resumes(state_dir: Path, make_spec: SpecMaker,
                                                             listen: str) -> None:
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    try:
        await deploy(api, make_spec("v1"))
        r = (await api.post("/v1/deploy", {"spec_path": str(make_spec(
            "v2", "v2m", **{"strategy.blue_green.auto_promote": False}))}))["rollout"]
        await wait_phase(api, r["id"], "awaiting_promotion")
        before = await api.get("/v1/services/shop")
        async with Traffic(f"http://{listen}", clients=4) as traffic:
            daemon.kill()
            await api.aclose()
            await asyncio.sleep(0.5)          # the router keeps serving with no daemon at all
            daemon = DaemonProcess(state_dir).start()
            api = AsyncApiClient(daemon.paths)
            after = await api.get("/v1/services/shop")
            assert after["rollout"]["id"] == r["id"] and after["rollout"]["phase"] == "awaiting_promotion"
            pids = lambda s: sorted(i["pid"] for sl in s["slots"].values() for i in sl["instances"])  # noqa: E731
            assert pids(after) == pids(before)          # re-adopted, not restarted
            done = (await api.post("/v1/services/shop/promote"))["rollout"]
            assert done["phase"] == "succeeded"
            t = time.monotonic()
            await asyncio.sleep(0.3)
        assert traffic.failures() == []
        assert set(traffic.versions(since=t)) == {"2"}
    finally:
        await api.aclose()
        daemon.stop()


async def test_daemon_killed_while_starting_resumes(state_dir: Path, make_spec: SpecMaker) -> None:
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    try:
        await deploy(api, make_spec("v1"))
        slow = make_spec("v2", "v2slow", **{"run.env": {"LOG_LEVEL": "info", "SHOP_STARTUP_DELAY": "1.5"}})
        r = (await api.post("/v1/deploy", {"spec_path": str(slow)}))["rollout"]
        await wait_phase(api, r["id"], "starting")
        await asyncio.sleep(0.3)
        daemon.kill()
        await api.aclose()
        daemon = DaemonProcess(state_dir).start()
        api = AsyncApiClient(daemon.paths)
        final = await api.wait_rollout(r["id"], 60)
        assert final["phase"] == "succeeded", final
        status = await api.get("/v1/services/shop")
        live = status["slots"][status["live_slot"]]["instances"]
        assert len(live) == 2 and all(i["status"] == "healthy" for i in live)
        events = (await api.get(f"/v1/rollouts/{r['id']}"))["events"]
        assert any("resuming rollout" in e["message"] for e in events)
    finally:
        await api.aclose()
        daemon.stop()


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_router_killed_is_restarted_with_its_table(api: AsyncApiClient, daemon: DaemonProcess,
                                                         make_spec: SpecMaker, listen: str, kind: str) -> None:
    """kill -9 of the data plane (HAProxy: master and worker, its whole process group)."""
    await deploy(api, make_spec("v2", **{"router.kind": kind}))
    pid = router_pid(daemon.paths.root, kind=kind)
    os.killpg(pid, signal.SIGKILL) if kind == "haproxy" else os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    new_pid = None
    while time.monotonic() < deadline:
        try:
            new_pid = router_pid(daemon.paths.root, kind=kind)
            if new_pid != pid:
                break
        except AssertionError:
            pass
        await asyncio.sleep(0.1)
    assert new_pid and new_pid != pid
    async with httpx.AsyncClient() as c:      # back in service once it listens again
        while time.monotonic() < deadline:
            try:
                if (await c.get(f"http://{listen}/")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    async with Traffic(f"http://{listen}", clients=4) as traffic:
        await asyncio.sleep(0.5)
    assert traffic.failures() == [] and set(traffic.versions()) == {"2"}


async def test_killed_instance_is_ejected_and_replaced(api: AsyncApiClient, make_spec: SpecMaker,
                                                       listen: str) -> None:
    await deploy(api, make_spec("v1"))
    status = await api.get("/v1/services/shop")
    live = status["slots"][status["live_slot"]]["instances"]
    victim = live[0]
    async with Traffic(f"http://{listen}", clients=8, pause=0.002) as traffic:
        await asyncio.sleep(0.3)
        os.killpg(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = await api.get("/v1/services/shop")
            now = status["slots"][status["live_slot"]]["instances"]
            if victim["id"] not in {i["id"] for i in now} and sum(i["status"] == "healthy" for i in now) == 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
    now = status["slots"][status["live_slot"]]["instances"]
    assert victim["id"] not in {i["id"] for i in now}
    assert sum(i["status"] == "healthy" for i in now) == 2
    # the router retried the dead instance's requests on the other one
    assert traffic.failures() == [], traffic.failures()[:3]
    events = (await api.get("/v1/services/shop/events"))["events"]
    assert any(victim["id"] in e["message"] and "exited" in e["message"] for e in events)
