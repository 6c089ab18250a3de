"""Faults in the middle of a fleet rollout, on five namespace hosts through the real daemon:
the SSH connections of a host cut mid-rollout, and the controller SIGKILLed mid-batch and
started again. Either way the rollout ends (finished, or failed/rolled back with nothing of
the new release left), no instance runs on a host that the store does not know of, and users
see 0 failed requests."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from test_fleet_deploy import COMMAND, fleet_section, live_hosts, shop_processes

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker
from support.netns_hosts import NetnsFleet

pytestmark = pytest.mark.timeout(240)

ON_HOST = ("starting", "healthy", "unhealthy", "stopping")


def spec_for(make_spec: SpecMaker, fleet: NetnsFleet, version: str) -> Any:
    return make_spec(version, f"{version}-chaos", **{"replicas": None, "run.command": COMMAND,
                                                     "fleet": fleet_section(fleet, {"per_host": 1}),
                                                     "health.start_timeout": "20s"})


async def first_batch(api: AsyncApiClient, rollout_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        events = (await api.get(f"/v1/rollouts/{rollout_id}"))["events"]
        if any(e["kind"] == "fleet.batch" for e in events):
            return
        assert time.monotonic() < deadline, [e["kind"] for e in events]
        await asyncio.sleep(0.05)


async def recorded_on_hosts(api: AsyncApiClient) -> dict[str, int]:
    """Per host, the instances the store says may run there (every slot)."""
    status = await api.get("/v1/services/shop")
    counts: dict[str, int] = {}
    for slot in status["slots"].values():
        for i in slot["instances"]:
            if i["status"] in ON_HOST:
                counts[i["host"]] = counts.get(i["host"], 0) + 1
    return counts


async def settled_fleet(api: AsyncApiClient, fleet: NetnsFleet, timeout: float = 30) -> dict[str, int]:
    """Once the supervisor has done its part (warm slot kept, orphans stopped), what runs on the
    hosts equals what the store knows of; returns the shop processes per host."""
    deadline = time.monotonic() + timeout
    while True:
        running = shop_processes(fleet)
        recorded = await recorded_on_hosts(api)
        if {a: n for a, n in running.items() if n} == recorded or time.monotonic() > deadline:
            assert {a: n for a, n in running.items() if n} == recorded, (running, recorded)
            return running
        await asyncio.sleep(0.3)


def assert_outcome(final: dict[str, Any], running: dict[str, int], addresses: list[str]) -> None:
    if final["phase"] == "succeeded":
        assert running == dict.fromkeys(addresses, 2), running          # v2 on every host, v1 warm beside
    else:
        assert running == dict.fromkeys(addresses, 1), running          # nothing of v2 left


@pytest.mark.parametrize("fault", ["sessions_killed", "link_down_3s"])
async def test_ssh_connections_of_a_host_dropped_mid_rollout(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, listen: str, fault: str) -> None:
    """Its sshd sessions killed (twice: the reconnection too), or its link down for 3 s."""
    addresses = sorted(h.address for h in fleet5.hosts)
    v1 = (await api.post("/v1/deploy", {"spec_path": str(spec_for(make_spec, fleet5, "v1"))}))["rollout"]
    assert (await api.wait_rollout(v1["id"], 120))["phase"] == "succeeded"
    victim = fleet5.hosts[3]
    async with Traffic(f"http://{listen}", clients=8, pause=0.005) as traffic:
        await asyncio.sleep(0.3)
        r = (await api.post("/v1/deploy", {"spec_path": str(spec_for(make_spec, fleet5, "v2"))}))["rollout"]
        await first_batch(api, r["id"])
        if fault == "sessions_killed":
            dropped = fleet5.drop_connections(victim)
            await asyncio.sleep(0.5)
            dropped += fleet5.drop_connections(victim)        # its reconnection too
        else:
            fleet5.cut_network(victim)
            try:
                await asyncio.sleep(3.0)
            finally:
                fleet5.restore_network(victim)
            dropped = ["link down 3 s"]
        final = await api.wait_rollout(r["id"], 120)
        t_end = time.monotonic()
        await asyncio.sleep(0.5)
    print(f"{fault} on {victim.address} ({dropped}); rollout {final['phase']}: "
          f"{final.get('reason')}")
    assert dropped, "no SSH session to drop: the fault did not happen"
    assert final["phase"] in ("succeeded", "failed", "rolled_back", "aborted"), final
    assert traffic.failures() == [], traffic.failures()[:5]
    want = "2" if final["phase"] == "succeeded" else "1"
    assert set(traffic.versions(since=t_end)) == {want}
    assert_outcome(final, await settled_fleet(api, fleet5), addresses)
    assert await live_hosts(api) == addresses


async def test_controller_killed_mid_batch_and_restarted(
        fleet5: NetnsFleet, api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker, listen: str) -> None:
    addresses = sorted(h.address for h in fleet5.hosts)
    v1 = (await api.post("/v1/deploy", {"spec_path": str(spec_for(make_spec, fleet5, "v1"))}))["rollout"]
    assert (await api.wait_rollout(v1["id"], 120))["phase"] == "succeeded"
    async with Traffic(f"http://{listen}", clients=8, pause=0.005) as traffic:
        await asyncio.sleep(0.3)
        r = (await api.post("/v1/deploy", {"spec_path": str(spec_for(make_spec, fleet5, "v2"))}))["rollout"]
        await first_batch(api, r["id"])
        deadline = time.monotonic() + 20
        while max(shop_processes(fleet5).values()) < 2:    # a v2 process appears on a host: kill now,
            assert time.monotonic() < deadline             # likely before its start is recorded
        daemon.stop(signal.SIGKILL)
        daemon.start()
        again = AsyncApiClient(daemon.paths, timeout=120)
        try:
            final = await again.wait_rollout(r["id"], 120)
            t_end = time.monotonic()
            await asyncio.sleep(0.5)
            running = await settled_fleet(again, fleet5)
            hosts = await live_hosts(again)
            events = (await again.get("/v1/services/shop/events"))["events"]
        finally:
            await again.aclose()
    swept = [i for e in events if e["kind"] == "instance.unrecorded_stopped" for i in e["data"]["instances"]]
    print(f"controller killed mid-batch: rollout {final['phase']} after the restart ({final.get('reason')}); "
          f"{len(swept)} unrecorded instance(s) stopped on the hosts")
    assert traffic.failures() == [], traffic.failures()[:5]
    want = "2" if final["phase"] == "succeeded" else "1"
    assert set(traffic.versions(since=t_end)) == {want}
    assert_outcome(final, running, addresses)
    assert hosts == addresses
