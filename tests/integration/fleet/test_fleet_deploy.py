"""The example shop on five namespace hosts through the real daemon: each host's own sshd,
the instances started over SSH, the embedded router on this machine as the edge, and user
traffic through it. v1 with one instance per host, v2 blue-green in batches of two (three
batches), the switch and a rollback with 0 failed requests, a broken v3 that stops at its
first batch with nothing of it left on the hosts; and a host killed under load: lost after
fleet.lost_after, its instance off the edge and replaced on another host. The blue-green case
runs with either edge (ROUTER_KINDS): the embedded router or HAProxy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker, deploy
from support.netns_hosts import NetnsFleet
from support.netns_leftovers import cmdline
from support.routers import haproxy_worker_pid

pytestmark = pytest.mark.timeout(240)

COMMAND = ["python3", "-m", "shop", "--host", "${HOST}", "--port", "${PORT}"]
BROKEN_RELEASE = 'version = "3"\ngreeting = [unterminated\n'
"""Not TOML: v3 exits at start (code 2) on every host, so it fails its health checks."""


def fleet_section(fleet: NetnsFleet, placement: dict[str, int], lost_after: str = "30s") -> dict[str, Any]:
    return {"hosts": [{"name": h.name, "address": h.address} for h in fleet.hosts],
            "ssh": {"user": fleet.user, "identity": str(fleet.client_key), "known_hosts": str(fleet.known_hosts)},
            "placement": placement, "batch": {"max_parallel": 2}, "lost_after": lost_after}


def on_fleet(make_spec: SpecMaker, fleet: NetnsFleet, version: str, placement: dict[str, Any],
             **changes: Any) -> Path:
    placement = dict(placement)
    kind = placement.pop("router.kind", "embedded")
    return make_spec(version, f"{version}-fleet{'-broken' if 'build.files' in changes else ''}-{kind}",
                     **{"replicas": None, "run.command": COMMAND, "fleet": fleet_section(fleet, placement),
                        "health.start_timeout": "20s", "router.kind": kind} | changes)


async def haproxy_server_addresses(daemon: DaemonProcess) -> list[str]:
    """The addresses of the shop servers the daemon's HAProxy holds (not in maintenance), asked
    on its Runtime API socket: `show servers state`."""
    [sock] = list(daemon.paths.root.rglob("admin.sock"))
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(b"show servers state\n")
    reply = (await reader.read()).decode()
    writer.close()
    rows = [line.split() for line in reply.splitlines()[1:] if line and not line.startswith("#")]
    return [r[4] for r in rows if "shop" in r[1] and int(r[6]) & 1 == 0]     # srv_admin_state: bit 1 = maint


def shop_processes(fleet: NetnsFleet) -> dict[str, int]:
    """Per host, how many shop processes run there (seen from this machine, by pid namespace)."""
    return {h.address: sum(1 for p in h.pids() if " -m shop " in f" {cmdline(p)} ") for h in fleet.hosts}


async def rollout_events(api: AsyncApiClient, rollout_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in (await api.get(f"/v1/rollouts/{rollout_id}"))["events"] if e["kind"] == kind]


async def live_hosts(api: AsyncApiClient) -> list[str]:
    status = await api.get("/v1/services/shop")
    return sorted(i["host"] for i in status["slots"][status["live_slot"]]["instances"] if i["status"] == "healthy")


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_blue_green_in_batches_rollback_and_a_broken_release_across_five_hosts(
        fleet5: NetnsFleet, api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker, listen: str,
        kind: str) -> None:
    """On both edges; on HAProxy its servers are the hosts' addresses and every traffic change
    (the switch, the rollback) is Runtime API commands: its worker is never replaced."""
    addresses = sorted(h.address for h in fleet5.hosts)
    per_host = {"per_host": 1, "router.kind": kind}
    v1 = await deploy(api, on_fleet(make_spec, fleet5, "v1", per_host))
    assert v1["phase"] == "succeeded", v1
    assert await live_hosts(api) == addresses
    assert shop_processes(fleet5) == dict.fromkeys(addresses, 1)
    worker = haproxy_worker_pid(daemon.paths.root) if kind == "haproxy" else None
    if worker is not None:
        assert sorted(await haproxy_server_addresses(daemon)) == addresses

    async with Traffic(f"http://{listen}", clients=8, pause=0.005) as traffic:
        await asyncio.sleep(0.5)
        t_v2 = time.monotonic()
        v2 = await deploy(api, on_fleet(make_spec, fleet5, "v2", per_host))
        assert v2["phase"] == "succeeded", v2
        batches = await rollout_events(api, v2["id"], "fleet.batch")
        assert [len(b["data"]["hosts"]) for b in batches] == [2, 2, 1]
        assert sorted(a for b in batches for a in b["data"]["hosts"]) == addresses
        assert await live_hosts(api) == addresses
        await asyncio.sleep(0.3)
        assert traffic.settled_at("2", t_v2) is not None
        assert shop_processes(fleet5) == dict.fromkeys(addresses, 2)      # v1 warm beside v2
        if worker is not None:     # both slots' servers: 2 per host
            assert sorted(await haproxy_server_addresses(daemon)) == sorted(addresses * 2)

        t_rb = time.monotonic()
        rb = (await api.post("/v1/services/shop/rollback"))["rollout"]
        assert rb["phase"] == "succeeded" and rb["kind"] == "rollback", rb
        call = time.monotonic() - t_rb
        await asyncio.sleep(0.3)
        settle = traffic.settled_at("1", t_rb)
        assert settle is not None and settle <= call + 0.1, (settle, call)

        t_v3 = time.monotonic()
        v3 = await deploy(api, on_fleet(make_spec, fleet5, "v3", per_host,
                                        **{"build.files": {"release.toml": BROKEN_RELEASE}}))
        assert v3["phase"] == "failed", v3
        assert "batch 1" in v3["reason"], v3["reason"]
        assert len(await rollout_events(api, v3["id"], "fleet.batch")) == 1
        await asyncio.sleep(0.2)
        assert set(traffic.versions(since=t_v3)) == {"1"}
    assert traffic.failures() == [], traffic.failures()[:5]
    assert len(traffic.samples) > 300
    assert shop_processes(fleet5) == dict.fromkeys(addresses, 1)          # only v1: nothing of v3 (or v2) left
    assert await live_hosts(api) == addresses
    if worker is not None:
        assert haproxy_worker_pid(daemon.paths.root) == worker


async def test_a_host_killed_under_load_is_lost_and_its_instance_replaced_elsewhere(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    placement = {"total": 5, "max_per_host": 2}
    spec = make_spec("v1", "v1-fleet-total", **{"replicas": None, "run.command": COMMAND,
                                                "fleet": fleet_section(fleet5, placement, lost_after="5s")})
    assert (await deploy(api, spec))["phase"] == "succeeded"
    victim = fleet5.hosts[2]
    async with Traffic(f"http://{listen}", clients=8, pause=0.005) as traffic:
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        fleet5.kill_host(victim)
        lost: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = (await api.get("/v1/services/shop/events"))["events"]
            lost = [e for e in events if e["kind"] == "host.lost"]
            hosts = await live_hosts(api)
            if lost and len(hosts) == 5 and victim.address not in hosts:
                break
            await asyncio.sleep(0.2)
        replaced_in = time.monotonic() - killed
        assert lost and lost[0]["data"]["address"] == victim.address, lost
        hosts = await live_hosts(api)
        assert len(hosts) == 5 and victim.address not in hosts, hosts
        print(f"host killed -> lost and replaced in {replaced_in:.1f}s; "
              f"{len(traffic.failures())} of {len(traffic.samples)} requests failed meanwhile")
        after = time.monotonic()
        await asyncio.sleep(1.0)
    assert traffic.failures(since=after) == []
    assert [v for v in traffic.versions(since=after)] == ["1"]
    audit = (await api.get("/v1/audit?service=shop"))["audit"]
    assert any(a["action"] == "host.lost" for a in audit)


async def test_a_lost_host_that_answers_again_has_its_old_instance_stopped(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    """Its cable pulled, the host's instance keeps running there unseen; once it answers again
    that old instance is stopped (host.back), not re-adopted: it was replaced elsewhere."""
    placement = {"total": 5, "max_per_host": 2}
    spec = make_spec("v1", "v1-fleet-total", **{"replicas": None, "run.command": COMMAND,
                                                "fleet": fleet_section(fleet5, placement, lost_after="5s")})
    assert (await deploy(api, spec))["phase"] == "succeeded"
    victim = fleet5.hosts[1]
    [old] = [i for i in await live_instances(api) if i["host"] == victim.address]
    fleet5.cut_network(victim)
    try:
        await until(api, lambda ev, hosts: any(e["kind"] == "host.lost" for e in ev)
                    and len(hosts) == 5 and victim.address not in hosts, 60)
        assert shop_processes(fleet5)[victim.address] == 1          # silent, not dead: it still runs there
    finally:
        fleet5.restore_network(victim)
    back_in = await until(api, lambda ev, hosts: any(e["kind"] == "host.back" for e in ev), 60)
    deadline = time.monotonic() + 15
    while shop_processes(fleet5)[victim.address] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    print(f"host answered again -> host.back in {back_in:.1f}s")
    assert shop_processes(fleet5)[victim.address] == 0
    events = (await api.get("/v1/services/shop/events"))["events"]
    [back] = [e for e in events if e["kind"] == "host.back"]
    assert back["data"]["instances"] == [old["id"]]
    assert any(e["kind"] == "instance.stopped" and e["data"]["instance"] == old["id"] for e in events)
    assert victim.address not in await live_hosts(api) and len(await live_hosts(api)) == 5
    audit = (await api.get("/v1/audit?service=shop"))["audit"]
    assert any(a["action"] == "host.back" for a in audit)


async def until(api: AsyncApiClient, done: Any, timeout: float) -> float:
    """Seconds until done(events, live hosts) holds (fails after `timeout`)."""
    began = time.monotonic()
    while True:
        events = (await api.get("/v1/services/shop/events"))["events"]
        if done(events, await live_hosts(api)):
            return time.monotonic() - began
        assert time.monotonic() - began < timeout, [e["kind"] for e in events][-20:]
        await asyncio.sleep(0.2)


async def test_a_restarted_daemon_readopts_the_instances_on_the_hosts(
        fleet5: NetnsFleet, api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker, listen: str) -> None:
    assert (await deploy(api, on_fleet(make_spec, fleet5, "v1", {"per_host": 1})))["phase"] == "succeeded"
    before = {i["id"]: (i["host"], i["pid"]) for i in await live_instances(api)}
    assert len(before) == 5
    async with Traffic(f"http://{listen}", clients=4, pause=0.01) as traffic:
        daemon.stop()
        daemon.start()
        again = AsyncApiClient(daemon.paths, timeout=120)
        try:
            await asyncio.sleep(2.0)            # supervisor ticks and status polls of every host
            after = {i["id"]: (i["host"], i["pid"]) for i in await live_instances(again)}
            kinds = [e["kind"] for e in (await again.get("/v1/services/shop/events"))["events"]]
            logs = (await again.get("/v1/services/shop/logs?lines=20"))["logs"]
        finally:
            await again.aclose()
    assert after == before
    assert len(logs) == 5
    for entry in logs:                  # `shipyard logs`: each log read on its instance's host
        host = before[entry["instance"]][0]
        assert f"listening on http://{host}:" in entry["log"], entry
    assert kinds.count("instance.adopted") == 5 and "instance.lost" not in kinds and "instance.died" not in kinds
    assert traffic.failures() == [] and set(traffic.versions()) == {"1"}
    assert shop_processes(fleet5) == dict.fromkeys(sorted(h.address for h in fleet5.hosts), 1)


async def live_instances(api: AsyncApiClient) -> list[dict[str, Any]]:
    status = await api.get("/v1/services/shop")
    return [i for i in status["slots"][status["live_slot"]]["instances"] if i["status"] == "healthy"]
