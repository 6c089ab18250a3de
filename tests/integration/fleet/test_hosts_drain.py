"""`shipyard hosts drain | remove | undrain` as a user runs them, on five namespace hosts
through the real daemon, under load: the drained host's instance is replaced on another host
(healthy and routed first) and stops, 0 requests fail; remove refuses while it runs and
works once it is empty; the held state survives a daemon restart (a v2 deploy places nothing
there) and undrain makes the host usable again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest
from test_fleet_deploy import COMMAND, fleet_section, live_hosts, shop_processes

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess, cli_argv
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker, deploy
from support.netns_hosts import NetnsFleet

pytestmark = pytest.mark.timeout(240)


def shipyard(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_argv(), *args, "--state-dir", str(daemon.paths.root)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


async def test_drain_under_load_remove_restart_undrain(fleet5: NetnsFleet, api: AsyncApiClient,
                                                        daemon: DaemonProcess, make_spec: SpecMaker,
                                                        listen: str) -> None:
    placement = {"total": 5, "max_per_host": 2}
    fleet = fleet_section(fleet5, placement)
    v1 = make_spec("v1", "v1-fleet-drain", **{"replicas": None, "run.command": COMMAND, "fleet": fleet,
                                              "health.start_timeout": "20s"})
    assert (await deploy(api, v1))["phase"] == "succeeded"
    target = fleet5.hosts[2]
    assert shop_processes(fleet5)[target.address] == 1

    refused = await asyncio.to_thread(shipyard, daemon, "hosts", "remove", target.name)
    assert refused.returncode == 1 and f"drain it first: shipyard hosts drain {target.name}" in refused.stderr, (
        refused.stdout + refused.stderr)

    async with Traffic(f"http://{listen}", clients=8, pause=0.005) as traffic:
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        drained = await asyncio.to_thread(shipyard, daemon, "hosts", "drain", target.name, "--timeout", "90")
        took = time.monotonic() - t0
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert f"drained: nothing runs on {target.name}" in drained.stdout, drained.stdout
        await asyncio.sleep(0.5)
    print(f"drain of {target.name} under load: {took:.1f}s, {len(traffic.failures())} of {len(traffic.samples)} "
          "requests failed")
    assert traffic.failures() == [], traffic.failures()[:5]
    assert len(traffic.samples) > 100
    hosts = await live_hosts(api)
    assert len(hosts) == 5 and target.address not in hosts, hosts
    assert shop_processes(fleet5)[target.address] == 0
    kinds = [e["kind"] for e in (await api.get("/v1/services/shop/events"))["events"]]
    assert "host.draining" in kinds and "host.drained" in kinds

    removed = await asyncio.to_thread(shipyard, daemon, "hosts", "remove", target.name)
    assert removed.returncode == 0 and "remove it from fleet.hosts" in removed.stdout, removed.stdout + removed.stderr

    daemon.stop()
    daemon.start()
    again = AsyncApiClient(daemon.paths, timeout=120)
    try:
        assert (await again.get(f"/v1/hosts/{target.name}"))["state"] == "removed"
        v2 = make_spec("v2", "v2-fleet-drain", **{"replicas": None, "run.command": COMMAND, "fleet": fleet,
                                                  "health.start_timeout": "20s"})
        assert (await deploy(again, v2))["phase"] == "succeeded"
        hosts = await live_hosts(again)
        assert len(hosts) == 5 and target.address not in hosts, hosts
        assert shop_processes(fleet5)[target.address] == 0
        listed = await asyncio.to_thread(shipyard, daemon, "hosts", "--json")
        rows = {h["name"]: h for h in json.loads(listed.stdout)["hosts"]}
        assert rows[target.name]["state"] == "removed" and rows[fleet5.hosts[0].name]["state"] == "up"
        back = await asyncio.to_thread(shipyard, daemon, "hosts", "undrain", target.name)
        assert back.returncode == 0 and f"{target.name} ({target.address}): up" in back.stdout, back.stdout
        audit = [a["action"] for a in (await again.get("/v1/audit"))["audit"]]
        assert {"hosts.drain", "hosts.remove", "hosts.undrain"} <= set(audit), audit
    finally:
        await again.aclose()
