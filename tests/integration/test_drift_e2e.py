"""The Drift test against a real daemon: a file edited inside a running instance's image
tree is found (with its path) and healed by replacement under load with no failed request;
a killed instance is reported and replaced; a stray listener on a managed port is
unmanaged; an instance left up by a half-finished intervention is release drift; and an
instance cannot write into its own tree."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker, deploy
from support.procs import kill_everything_under


async def drift(api: AsyncApiClient, mode: str = "metadata", fix: bool = False) -> dict:
    return await api.post("/v1/services/shop/drift", {"mode": mode, "fix": fix})


def kinds(report: dict) -> list[str]:
    return sorted({f["kind"] for f in report["findings"]})


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_tampered_tree_is_found_and_healed_by_replacement_under_load(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, state_dir: Path, kind: str) -> None:
    """On both routers: HAProxy's listener is shipyard's too, and the heal swaps instances on it."""
    assert (await deploy(api, make_spec("v1", **{"router.kind": kind})))["phase"] == "succeeded"
    clean = await drift(api, "full")
    assert clean["report"]["clean"], clean
    assert clean["enforcement"]["mode"] in ("landlock", "bubblewrap", "verify-only")
    status = await api.get("/v1/services/shop")
    live = status["slots"][status["live_slot"]]
    old_ids = {i["id"] for i in live["instances"]}
    tree = state_dir / "images" / "trees" / live["image"]
    target = tree / "shop" / "catalog.json"
    os.chmod(target, 0o644)
    target.write_text('[{"id": 1, "name": "patched on the server", "price": 1}]')     # the operator's "quick fix"

    for mode in ("metadata", "full"):
        found = (await drift(api, mode))["report"]
        content = [f for f in found["findings"] if f["kind"] == "content"]
        assert content and all("shop/catalog.json" in f["paths"] for f in content), found
        assert {f["instance_id"] for f in content} == old_ids

    async with Traffic(f"http://{listen}", clients=8, pause=0.005, path="/products") as traffic:
        await asyncio.sleep(0.3)
        fixed = await drift(api, "full", fix=True)
        await asyncio.sleep(0.3)
    assert traffic.failures() == [], traffic.failures()[:3]
    assert {r["drifted"] for r in fixed["heal"]["replaced"]} == old_ids
    assert fixed["after"]["clean"], fixed["after"]
    status = await api.get("/v1/services/shop")
    new = status["slots"][status["live_slot"]]["instances"]
    assert len(new) == 2 and not ({i["id"] for i in new} & old_ids)
    assert "patched on the server" not in (tree / "shop" / "catalog.json").read_text()   # a pristine tree
    events = [e["kind"] for e in (await api.get("/v1/services/shop/events"))["events"]]
    assert "drift.found" in events and "drift.healed" in events


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_killed_instance_and_stray_listener(api: AsyncApiClient, make_spec: SpecMaker, listen: str,
                                                  state_dir: Path, kind: str) -> None:
    assert (await deploy(api, make_spec("v1", **{"router.kind": kind})))["phase"] == "succeeded"
    status = await api.get("/v1/services/shop")
    victim = status["slots"][status["live_slot"]]["instances"][0]
    os.killpg(victim["pid"], signal.SIGKILL)
    report = (await drift(api))["report"]
    assert not report["clean"]
    assert any(victim["id"] in (f.get("instance_id") or "") or victim["id"] in f["detail"]
               or f["evidence"].get("change") == "too_few_instances" for f in report["findings"]), report
    deadline = time.monotonic() + 30
    while not (await drift(api))["report"]["clean"]:           # the supervisor replaced it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)

    port = listen.rsplit(":", 1)[1]
    stray = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.2", port],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=state_dir)
    try:
        deadline = time.monotonic() + 10
        while True:
            report = (await drift(api))["report"]
            unmanaged = [f for f in report["findings"] if f["kind"] == "unmanaged"]
            if unmanaged or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert unmanaged and stray.pid in unmanaged[0]["evidence"]["pids"], report
    finally:
        stray.kill()
        stray.wait()


async def test_instance_left_up_by_a_half_finished_intervention_is_release_drift(
        state_dir: Path, make_spec: SpecMaker) -> None:
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    try:
        assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
        assert (await deploy(api, make_spec("v2")))["phase"] == "succeeded"
        status = await api.get("/v1/services/shop")
        warm = next(n for n, s in status["slots"].items() if s["state"] == "warm")
        left = {i["id"] for i in status["slots"][warm]["instances"]}
        daemon.kill()            # someone stops the daemon and retires the old slot by hand, half-way:
        await api.aclose()
        db = sqlite3.connect(state_dir / "state.db")
        slots = db.execute("SELECT slots FROM services WHERE name='shop'").fetchone()[0]
        db.execute("UPDATE services SET slots=? WHERE name='shop'",
                   (slots.replace('"state": "warm"', '"state": "idle"'),))
        db.commit()
        db.close()
        daemon = DaemonProcess(state_dir).start()
        api = AsyncApiClient(daemon.paths)
        report = (await drift(api))["report"]
        release = [f for f in report["findings"] if f["kind"] == "release"]
        assert {f["instance_id"] for f in release} == left, report
        fixed = await drift(api, fix=True)
        assert set(fixed["heal"]["stopped"]) == left and fixed["after"]["clean"], fixed
    finally:
        await api.aclose()
        daemon.stop()
        kill_everything_under(state_dir)


async def test_drift_command_exit_codes(api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path) -> None:
    from test_cli import sy
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    clean = sy("drift", "shop", state=state_dir)
    assert clean.returncode == 0 and "clean" in clean.stdout and "enforcement:" in clean.stdout, clean
    status = await api.get("/v1/services/shop")
    tree = state_dir / "images" / "trees" / status["slots"][status["live_slot"]]["image"]
    os.chmod(tree / "shop", 0o755)
    (tree / "shop" / "backdoor.py").write_text("print('hi')\n")
    found = sy("drift", "--full", state=state_dir)                  # every service
    assert found.returncode == 2 and "shop/backdoor.py" in found.stdout, found
    doc = json.loads(sy("drift", "shop", "--json", state=state_dir).stdout)
    assert doc["report"]["counts"]["content"] >= 1
    missing = sy("drift", "nosuch", state=state_dir)
    assert missing.returncode == 1 and "nosuch" in missing.stderr


async def test_heal_true_replaces_a_drifted_instance_by_itself(api: AsyncApiClient, make_spec: SpecMaker,
                                                               listen: str, state_dir: Path) -> None:
    spec = make_spec("v1", "v1-heal", **{"drift": {"interval": "1s", "full_interval": "1h", "heal": True}})
    assert (await deploy(api, spec))["phase"] == "succeeded"
    status = await api.get("/v1/services/shop")
    live = status["slots"][status["live_slot"]]
    old_ids = {i["id"] for i in live["instances"]}
    target = state_dir / "images" / "trees" / live["image"] / "shop" / "catalog.json"
    os.chmod(target, 0o644)
    target.write_text("[]")
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, path="/products") as traffic:
        deadline = time.monotonic() + 30
        while True:
            status = await api.get("/v1/services/shop")
            ids = {i["id"] for i in status["slots"][status["live_slot"]]["instances"]}
            if ids and not ids & old_ids and status["drift"] and status["drift"]["clean"]:
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.3)
    assert traffic.failures() == []
    audit = (await api.get("/v1/audit?service=shop"))["audit"]
    heals = [a for a in audit if a["action"] == "drift.heal"]
    assert len(heals) == 2 and all(a["actor"] == "shipyard-daemon" for a in heals), audit


async def test_drift_results_are_in_metrics(api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker,
                                           state_dir: Path) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = json.loads(daemon.paths.api.read_text())["url"]
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{url}/metrics")            # no token: Prometheus scrapes it as is
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(resp.text) for s in fam.samples}

    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    await drift(api, "full")
    m = await scrape()
    assert m[("shipyard_drift_clean", (("service", "shop"),))] == 1
    assert m[("shipyard_drift_last_scan_timestamp_seconds", (("mode", "full"), ("service", "shop")))] > 0
    assert any(k[0] == "shipyard_enforcement_info" and v == 1 for k, v in m.items())
    status = await api.get("/v1/services/shop")
    tree = state_dir / "images" / "trees" / status["slots"][status["live_slot"]]["image"]
    os.chmod(tree / "shop" / "catalog.json", 0o644)
    (tree / "shop" / "catalog.json").write_text("[]")
    await drift(api)
    m = await scrape()
    assert m[("shipyard_drift_clean", (("service", "shop"),))] == 0
    assert m[("shipyard_drift_findings", (("kind", "content"), ("service", "shop")))] >= 1
