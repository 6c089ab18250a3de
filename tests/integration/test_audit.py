"""The audit log of a real daemon: every change with actor, why and evidence, in order;
append-only in the store; wrong tokens recorded (throttled); no secret ever in it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.client import AsyncApiClient, local_actor
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import example_dir
from support import SpecMaker, deploy
from support.pg import throwaway_db


async def audit(api: AsyncApiClient, **params: Any) -> list[dict[str, Any]]:
    q = "&".join(f"{k}={v}" for k, v in params.items())
    return (await api.get(f"/v1/audit?{q}"))["audit"]


def user_actor(daemon: DaemonProcess) -> str:
    token = daemon.paths.token.read_text().strip()
    return f"{local_actor()} via token {hashlib.sha256(token.encode()).hexdigest()[:8]}"


async def test_changes_are_logged_in_order_and_cannot_be_rewritten(
        api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker, state_dir: Path) -> None:
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    assert (await deploy(api, make_spec("v3")))["phase"] == "failed"
    assert (await deploy(api, make_spec("v2")))["phase"] == "succeeded"
    assert (await api.post("/v1/services/shop/rollback"))["rollout"]["phase"] == "succeeded"
    held = (await api.post("/v1/deploy", {"spec_path": str(make_spec(
        "v2", "v2-manual", **{"strategy.blue_green.auto_promote": False}))}))["rollout"]
    deadline = time.monotonic() + 60
    while (await api.get(f"/v1/rollouts/{held['id']}"))["rollout"]["phase"] != "awaiting_promotion":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await api.post("/v1/services/shop/abort"))["rollout"]["phase"] == "aborted"

    entries = await audit(api, service="shop")
    got = [(e["action"], e["rollout_id"]) for e in entries]
    assert got == [
        ("deploy", "shop-1"), ("rollout.succeeded", "shop-1"),
        ("deploy", "shop-2"), ("rollout.failed", "shop-2"),
        ("deploy", "shop-3"), ("rollout.succeeded", "shop-3"),
        ("rollback", "shop-4"), ("rollout.succeeded", "shop-4"),
        ("deploy", "shop-5"), ("abort", "shop-5"), ("rollout.aborted", "shop-5"),
    ]
    me = user_actor(daemon)
    for e in entries:
        assert e["actor"] == (me if not e["action"].startswith("rollout.") else "shipyard-daemon"), e
        assert e["why"], e
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    by = {(e["action"], e["rollout_id"]): e for e in entries}
    assert by[("deploy", "shop-2")]["evidence"]["spec_path"].endswith("v3.yaml")
    refused = by[("rollout.failed", "shop-2")]
    assert "preview check GET / on slot" in refused["why"] and "500" in refused["why"]
    assert refused["evidence"]["image"] and refused["evidence"]["previous_image"] == \
        by[("rollout.succeeded", "shop-1")]["evidence"]["image"]
    assert by[("rollout.aborted", "shop-5")]["why"] == "aborted by user"
    assert by[("rollout.succeeded", "shop-4")]["evidence"]["kind"] == "rollback"

    db = sqlite3.connect(daemon.paths.db, timeout=10)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET actor='nobody', why='' WHERE action='abort'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit WHERE service='shop'")
    finally:
        db.close()
    assert await audit(api, service="shop") == entries

    env = {**os.environ, "SHIPYARD_HOME": str(state_dir), "COLUMNS": "250"}
    hist = subprocess.run([sys.executable, "-m", "shipyard", "history", "shop", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    doc = json.loads(hist.stdout)
    assert [r["id"] for r in doc["rollouts"]] == ["shop-5", "shop-4", "shop-3", "shop-2", "shop-1"]
    assert doc["audit"] == entries
    human = subprocess.run([sys.executable, "-m", "shipyard", "history", "shop"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert "audit log" in human.stdout and "rollout.aborted" in human.stdout and local_actor() in human.stdout
    token = daemon.paths.token.read_text().strip()
    assert token not in json.dumps(entries) and token not in human.stdout


async def test_wrong_tokens_and_the_daemons_own_decisions(api: AsyncApiClient, daemon: DaemonProcess,
                                                          make_spec: SpecMaker) -> None:
    v1 = await deploy(api, make_spec("v1"))
    url = str(api._http.base_url).rstrip("/")
    async with httpx.AsyncClient(timeout=10) as http:
        wrong = ({"Authorization": "Bearer not-the-token-12345"}, {}, {"Authorization": "Bearer again"})
        for headers in wrong:
            assert (await http.post(f"{url}/v1/services/shop/abort", headers=headers)).status_code == 401
    rejected = [e for e in await audit(api) if e["action"] == "token.rejected"]
    assert len(rejected) == 1, "identical rejections from one address within 10 s make one entry"
    e = rejected[0]
    assert e["evidence"]["address"] == "127.0.0.1" and e["evidence"]["path"] == "/v1/services/shop/abort"
    assert e["why"] == "wrong API token on POST /v1/services/shop/abort" and e["service"] is None
    assert "not-the-token" not in json.dumps(e)

    status = await api.get("/v1/services/shop")
    victim = status["slots"][v1["target_slot"]]["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (replaced := [x for x in await audit(api, service="shop")
                            if x["action"] == "instance.replace"]):
        assert time.monotonic() < deadline, "the supervisor's replacement was not audited"
        await asyncio.sleep(0.1)
    assert replaced[0]["actor"] == "shipyard-daemon" and replaced[0]["evidence"]["instance"] == victim["id"]
    assert victim["id"] in replaced[0]["why"]


async def test_allowed_unsafe_migration_is_logged_with_its_findings(
        api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for f in sorted((example_dir() / "migrations").glob("*.sql"))[:2]:
        shutil.copy(f, migrations / f.name)
    async with throwaway_db("syaudit") as db:
        assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
        (migrations / "0003_total_index.sql").write_text("CREATE INDEX orders_total ON orders (total);\n")
        spec = make_spec("database/v2", "v2-index", **{
            "database.url": db, "database.migrations": str(migrations), "database.target": None})
        reason = "orders holds 12 rows; the lock lasts milliseconds"
        r = (await api.post("/v1/deploy", {"spec_path": str(spec), "allow_unsafe": reason}))["rollout"]
        assert (await api.wait_rollout(r["id"], 120))["phase"] == "succeeded"
    entries = [e for e in await audit(api, service="shop") if e["rollout_id"] == r["id"]]
    assert [e["action"] for e in entries] == ["deploy", "allow_unsafe", "rollout.succeeded"]
    started, allowed = entries[0], entries[1]
    assert started["why"] == reason and started["evidence"]["allow_unsafe"] == reason
    assert allowed["actor"] == started["actor"] == user_actor(daemon) and allowed["why"] == reason
    assert [f["rule"] for f in allowed["evidence"]["findings"]] == ["create-index-non-concurrent"]
