"""`shipyard checklist` against a real daemon: a PASS and a FAIL of each of the seed's four
tests (Undo, Blast radius, Drift, Database), through the API and through the CLI's exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.demo import example_dir
from support import SpecMaker
from support import deploy as deploy_and_wait
from support.pg import throwaway_db

CANARY = {"sticky": {"header": "X-User-Id"}, "analysis": {"min_requests": 20, "interval": "1s"},
          "steps": [{"set_weight": 5}, {"pause": "60s"}, {"set_weight": 50}, {"analysis": {"duration": "30s"}}]}


async def deploy(api: AsyncApiClient, spec: Path) -> dict[str, Any]:
    done = await deploy_and_wait(api, spec)
    assert done["phase"] == "succeeded", done
    return done

async def checks(api: AsyncApiClient, service: str = "shop") -> dict[str, dict[str, Any]]:
    doc = await api.get(f"/v1/services/{service}/checklist")
    return {c["name"]: c for c in doc["checks"]}


def cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", "checklist", *args, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=120)


def tamper(tree: Path) -> None:
    target = tree / "shop" / "catalog.json"
    os.chmod(target, 0o644)
    target.write_text('[{"id": 1, "name": "patched on the server", "price": 1}]')


async def test_undo_fails_without_a_previous_release_passes_cold_and_fails_on_a_tampered_tree(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path) -> None:
    await deploy(api, make_spec("v1"))
    undo = (await checks(api))["undo"]
    assert undo["status"] == "FAIL" and "no previous release" in undo["summary"], undo
    run = cli(state_dir, "shop")
    assert run.returncode == 1 and "FAIL" in run.stdout and "Undo" in run.stdout, run

    first = await deploy(api, make_spec("v2", **{"strategy.blue_green.scale_down_delay": "0s"}))
    undo = (await checks(api))["undo"]
    ev = undo["evidence"]
    assert undo["status"] == "PASS", undo
    assert ev["path"] == "cold redeploy" and "warm_slot" not in ev
    assert ev["previous_image"]["image"] == first["previous_image_id"] and ev["previous_image"]["tree"] == "intact"
    assert 0 < ev["estimate_seconds"] < 60 and ev["estimate_from"] == first["id"]
    assert ev["last_switch"]["seconds"] < 1 and ev["last_switch"]["source"] == first["id"]

    tamper(state_dir / "images" / "trees" / first["previous_image_id"])
    undo = (await checks(api))["undo"]
    assert undo["status"] == "FAIL" and "tampered" in undo["summary"], undo
    assert undo["evidence"]["previous_image"]["objects_ok"] and "remove the tree" in undo["action"]


async def test_blast_radius_of_a_canary_passes_and_of_blue_green_without_checks_fails_warm_undo_passes(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path) -> None:
    await deploy(api, make_spec("v1", "canary", **{"strategy": {"canary": CANARY}}))
    blast = (await checks(api))["blast_radius"]
    assert blast["status"] == "PASS", blast
    ev = blast["evidence"]
    assert ev["strategy"] == "canary" and ev["max_share_before_verdict"] == 5 and ev["verdict_step"] == 2
    assert ev["requests_before_verdict"] == 20 and ev["max_weight_without_analysis"] == 5

    done = await deploy(api, make_spec("v2", **{"strategy.blue_green.preview_checks": []}))
    got = await checks(api)
    blast, undo = got["blast_radius"], got["undo"]
    assert blast["status"] == "FAIL" and "without preview checks" in blast["summary"], blast
    assert blast["evidence"]["max_share_before_verdict"] == 100
    assert undo["status"] == "PASS" and undo["evidence"]["path"] == "switch", undo
    assert undo["evidence"]["warm_slot"]["slot"] == done["previous_slot"]
    assert undo["evidence"]["warm_slot"]["healthy_instances"] == 2
    assert "ms" in undo["summary"] and undo["evidence"]["last_switch"]["source"] == done["id"]

    run = cli(state_dir, "--json")
    assert run.returncode == 1, run
    doc = json.loads(run.stdout)
    assert [d["service"] for d in doc] == ["shop"] and doc[0]["status"] == "FAIL"


async def test_drift_passes_after_a_clean_full_scan_and_fails_on_drift(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path) -> None:
    await deploy(api, make_spec("v1"))
    await api.post("/v1/services/shop/drift", {"mode": "metadata"})
    drift = (await checks(api))["drift"]
    assert drift["status"] == "WARN" and "no full re-hash yet" in drift["summary"], drift   # not due for an hour
    await api.post("/v1/services/shop/drift", {"mode": "full"})
    drift = (await checks(api))["drift"]
    mode = drift["evidence"]["enforcement"]["mode"]
    if mode == "verify-only":
        assert drift["status"] == "WARN" and "verify-only" in drift["summary"], drift
    else:
        assert drift["status"] == "PASS", drift
        assert drift["evidence"]["last_scan"]["mode"] == "full" and drift["evidence"]["full_age_seconds"] < 60

    status = await api.get("/v1/services/shop")
    tamper(state_dir / "images" / "trees" / status["live_image"])
    await api.post("/v1/services/shop/drift", {"mode": "metadata"})
    drift = (await checks(api))["drift"]
    assert drift["status"] == "FAIL" and "catalog.json" in json.dumps(drift["evidence"]["findings"]), drift
    assert "drift --fix" in drift["action"]
    run = cli(state_dir, "shop")
    assert run.returncode == 1 and "Drift" in run.stdout
    unknown = cli(state_dir, "nope")
    assert unknown.returncode == 1 and "no service named 'nope'" in unknown.stderr, unknown
    bad_rate = cli(state_dir, "shop", "--rate", "0")
    assert bad_rate.returncode == 1 and "rate must be a positive number" in bad_rate.stderr, bad_rate
    high_rate = cli(state_dir, "shop", "--rate", "1e6", "--json")     # printed as 1e+06: must reach the daemon so
    assert high_rate.returncode == 1 and "rate must be" not in high_rate.stderr, high_rate
    assert json.loads(high_rate.stdout)["service"] == "shop"


@pytest.fixture
async def db() -> AsyncIterator[str]:
    async with throwaway_db("sycheck") as url:
        yield url


async def test_database_passes_up_to_date_and_fails_on_an_unsafe_pending_migration(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path, db: str) -> None:
    migrations = state_dir / "migrations"
    migrations.mkdir()
    for f in sorted((example_dir() / "migrations").glob("000[12]_*.sql")):
        shutil.copy(f, migrations / f.name)
    spec = make_spec("database/v1", **{"database.url": db, "database.migrations": str(migrations),
                                       "database.target": None})
    await deploy(api, spec)
    database = (await checks(api))["database"]
    assert database["status"] == "PASS", database
    assert database["evidence"]["pending"] == [] and database["evidence"]["applied"] == 2

    (migrations / "0003_orders_index.sql").write_text("CREATE INDEX orders_product_idx ON orders (product_id);\n")
    database = (await checks(api))["database"]
    assert database["status"] == "FAIL" and "unsafe pending migration" in database["summary"], database
    assert database["evidence"]["pending"] == ["0003"]
    assert any("0003_orders_index.sql" in b["where"] for b in database["evidence"]["blocking"])
    assert "CONCURRENTLY" in database["action"]
    run = cli(state_dir, "shop", "--json")
    assert run.returncode == 1 and json.loads(run.stdout)["status"] == "FAIL"

    # rewritten safely, it is only a warning until rehearsed; the command the warning names clears it
    (migrations / "0003_orders_index.sql").unlink()
    shutil.copy(example_dir() / "migrations" / "0003_orders_note.sql", migrations)
    database = (await checks(api))["database"]
    assert database["status"] == "WARN" and "not rehearsed yet" in database["summary"], database
    assert "shipyard db check SPEC" in database["action"]
    checked = subprocess.run([sys.executable, "-m", "shipyard", "db", "check", str(spec), "--state-dir",
                              str(state_dir)], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    database = (await checks(api))["database"]
    assert database["status"] == "PASS", database
    assert database["summary"] == "pending migration(s) 0003 lint clean and rehearsed (`db check`)"
    assert database["evidence"]["last_check"]["migrations"] == ["0003"]
