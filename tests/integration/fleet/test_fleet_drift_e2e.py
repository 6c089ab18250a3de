"""Fleet drift through the real daemon and CLI: the shop on five namespace hosts (one instance
each, the embedded router here as the edge), a file of the image tree edited on host 3 by
someone with a shell there; `shipyard drift` (metadata and --full) exits 2 naming host 3 and
the file's path on it, `shipyard drift --fix` under user traffic quarantines that host's
tree, starts the successor there from a fresh copy and routes it before the drifted one
leaves: 0 failed requests, and the fleet scans clean again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_fleet_deploy import on_fleet, shop_processes

from shipyard.client import AsyncApiClient
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker, deploy
from support.netns_hosts import NetnsFleet, NetnsHost
from support.netns_leftovers import cmdline

pytestmark = pytest.mark.timeout(240)

PATCHED = '[{"id": 1, "name": "patched on host 3", "price": 1}]'


def sy(*args: str, state: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The CLI, wide enough that a host path is never folded across lines."""
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


async def test_a_file_tampered_on_host_3_is_found_there_and_healed_by_replacement_under_load(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, listen: str, state_dir: Path) -> None:
    assert (await deploy(api, on_fleet(make_spec, fleet5, "v1", {"per_host": 1})))["phase"] == "succeeded"
    clean = await asyncio.to_thread(sy, "drift", "shop", "--full", state=state_dir)
    assert clean.returncode == 0 and "clean" in clean.stdout, clean

    status = await api.get("/v1/services/shop")
    live = status["slots"][status["live_slot"]]
    image = live["image"]
    victim = fleet5.hosts[2]
    [drifted] = [i["id"] for i in live["instances"] if i["host"] == victim.address]
    on_host = f"/root/.shipyard/images/trees/{image}/shop/catalog.json"
    target = victim.dir / "home" / on_host.removeprefix("/root/")
    pristine = target.read_text()
    os.chmod(target, 0o644)
    target.write_text(PATCHED)                 # the operator's "quick fix" on one host

    for flags in ((), ("--full",)):
        found = await asyncio.to_thread(sy, "drift", "shop", *flags, state=state_dir)
        assert found.returncode == 2, found
        assert f"{victim.name}:{on_host}" in found.stdout, found.stdout
        assert drifted in found.stdout and "shop/catalog.json" in found.stdout
    report = (await api.get("/v1/services/shop/drift"))["report"]
    content = [f for f in report["findings"] if f["kind"] == "content"]
    assert {(f["host"], f["instance_id"]) for f in content} == {(victim.name, drifted)}, report["findings"]
    assert {f["evidence"]["change"] for f in content} == {"content", "mode"}      # new bytes, and the chmod
    assert all(f["host"] == victim.name for f in report["findings"]), report["findings"]

    async with Traffic(f"http://{listen}", clients=8, pause=0.005, path="/products") as traffic:
        await asyncio.sleep(0.5)
        began = time.monotonic()
        fixed = await asyncio.to_thread(sy, "drift", "shop", "--fix", state=state_dir)
        healed_in = time.monotonic() - began
        await asyncio.sleep(0.5)
    assert fixed.returncode == 0, fixed
    assert f"healed {drifted} ->" in fixed.stdout and f"quarantined the tampered tree of {victim.address}:" \
        in fixed.stdout, fixed.stdout
    assert traffic.failures() == [], traffic.failures()[:5]
    assert len(traffic.samples) > 100

    status = await api.get("/v1/services/shop")
    instances = status["slots"][status["live_slot"]]["instances"]
    healthy = {i["id"]: i["host"] for i in instances if i["status"] == "healthy"}
    assert drifted not in healthy and sorted(healthy.values()) == sorted(h.address for h in fleet5.hosts)
    assert target.read_text() == pristine      # the successor's tree there is a fresh copy
    assert shop_processes(fleet5) == dict.fromkeys(sorted(h.address for h in fleet5.hosts), 1)
    again = await asyncio.to_thread(sy, "drift", "shop", "--full", state=state_dir)
    assert again.returncode == 0 and "clean" in again.stdout, again
    events = [e["kind"] for e in (await api.get("/v1/services/shop/events"))["events"]]
    assert "drift.quarantined" in events and "drift.healed" in events
    print(f"drift --fix on a fleet: {drifted} on {victim.name} replaced in {healed_in:.1f}s; "
          f"{len(traffic.failures())} of {len(traffic.samples)} requests failed")


async def test_with_drift_heal_the_daemon_replaces_a_tampered_instance_on_its_host_by_itself(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, listen: str, state_dir: Path) -> None:
    drift = {"interval": "1s", "full_interval": "1h", "heal": True}
    assert (await deploy(api, on_fleet(make_spec, fleet5, "v1", {"per_host": 1}, drift=drift)))["phase"] \
        == "succeeded"
    status = await api.get("/v1/services/shop")
    live = status["slots"][status["live_slot"]]
    victim = fleet5.hosts[4]
    [drifted] = [i["id"] for i in live["instances"] if i["host"] == victim.address]
    target = victim.dir / "home" / ".shipyard" / "images" / "trees" / live["image"] / "shop" / "catalog.json"
    pristine = target.read_text()
    async with Traffic(f"http://{listen}", clients=8, pause=0.005, path="/products") as traffic:
        await asyncio.sleep(0.5)
        os.chmod(target, 0o644)
        target.write_text(PATCHED)
        tampered = time.monotonic()
        healthy: dict[str, str] = {}
        report: dict = {}
        while time.monotonic() < tampered + 60:
            status = await api.get("/v1/services/shop")
            healthy = {i["id"]: i["host"] for i in status["slots"][status["live_slot"]]["instances"]
                       if i["status"] == "healthy"}
            report = (await api.get("/v1/services/shop/drift"))["report"] or {}
            if drifted not in healthy and len(healthy) == 5 and report.get("clean"):
                break
            await asyncio.sleep(0.2)
        healed_in = time.monotonic() - tampered
        await asyncio.sleep(0.5)
    assert drifted not in healthy and sorted(healthy.values()) == sorted(h.address for h in fleet5.hosts), healthy
    assert report.get("clean"), report
    assert target.read_text() == pristine
    assert traffic.failures() == [], traffic.failures()[:5]
    events = [e for e in (await api.get("/v1/services/shop/events"))["events"]]
    found = [e for e in events if e["kind"] == "drift.found"]
    assert found and all("h5: image" in e["message"] for e in found), [e["message"] for e in found]   # no false drift
    assert [e["data"]["instance"] for e in events if e["kind"] == "drift.healed"] == [drifted]
    print(f"drift.heal on a fleet: {drifted} on {victim.name} replaced {healed_in:.1f}s after the edit; "
          f"{len(traffic.failures())} of {len(traffic.samples)} requests failed")


def on_host_detached(host: NetnsHost, argv: list[str], env: dict[str, str]) -> None:
    """A process left running on the host by hand (inside its namespaces; it dies with the host)."""
    subprocess.run(["nsenter", "-t", str(host.init_pid), "-a", "setsid", "-f", "env", "-i",
                    *(f"{k}={v}" for k, v in env.items()), *argv], check=True, timeout=10,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def running_on(host: NetnsHost, marker: str) -> list[int]:
    return [p for p in host.pids() if marker in cmdline(p)]


async def test_strangers_on_a_host_are_reported_there_and_never_killed_by_a_fix(
        fleet5: NetnsFleet, api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path) -> None:
    """On host 2, by hand: a web server on the instance's port (another address) and a process
    claiming an instance id shipyard never recorded. Both are unmanaged drift on h2; --fix
    replaces nothing and kills neither (they are not shipyard's)."""
    assert (await deploy(api, on_fleet(make_spec, fleet5, "v1", {"per_host": 1})))["phase"] == "succeeded"
    status = await api.get("/v1/services/shop")
    live = status["slots"][status["live_slot"]]["instances"]
    h2 = fleet5.hosts[1]
    inst = next(i for i in live if i["host"] == h2.address)
    before = sorted(i["id"] for i in live)
    stray_id = "shop-blue-fe0001"
    data_dir = str(Path(inst["data_dir"]).parent.parent / stray_id / "data")
    on_host_detached(h2, ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(inst["port"])],
                     {"PATH": "/usr/bin:/bin"})
    on_host_detached(h2, ["python3", "-c", "import time; time.sleep(600)  # stray-by-hand"],
                     {"PATH": "/usr/bin:/bin", "SHIPYARD_INSTANCE_ID": stray_id, "SHIPYARD_SLOT": "blue",
                      "SHIPYARD_DATA_DIR": data_dir})
    deadline = time.monotonic() + 10
    while not (running_on(h2, "http.server") and running_on(h2, "stray-by-hand")):
        assert time.monotonic() < deadline, "the strangers did not start on h2"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)                    # the web server binds

    found = await asyncio.to_thread(sy, "drift", "shop", state=state_dir)
    assert found.returncode == 2, found
    report = (await api.get("/v1/services/shop/drift"))["report"]
    got = sorted((f["kind"], f.get("host"), f["evidence"].get("change")) for f in report["findings"])
    assert got == [("unmanaged", h2.name, "instance"), ("unmanaged", h2.name, "listener")], report["findings"]
    assert stray_id in found.stdout and "no record" in found.stdout and h2.name in found.stdout

    fixed = await asyncio.to_thread(sy, "drift", "shop", "--fix", state=state_dir)
    assert fixed.returncode == 2, fixed                 # still drift: a human decides about strangers
    doc = (await api.get("/v1/services/shop/drift"))["report"]
    assert sorted(f["evidence"].get("change") for f in doc["findings"]) == ["instance", "listener"]
    status = await api.get("/v1/services/shop")
    assert sorted(i["id"] for i in status["slots"][status["live_slot"]]["instances"]
                  if i["status"] == "healthy") == before
    assert running_on(h2, "http.server") and running_on(h2, "stray-by-hand")
