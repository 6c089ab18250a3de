"""The Database test in real deploys of examples/shop: expand migrations before the new
release takes traffic, contract held back until the old release is gone, the
compatibility gate catching a rename the old release cannot survive, unsafe migrations
stopped before anything changes, and failures that leave traffic untouched."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import sy

from shipyard.client import AsyncApiClient
from shipyard.devtools.demo import example_dir
from shipyard.devtools.loadgen import Traffic
from shipyard.errors import ConflictError, NotFoundError
from support import SpecMaker, deploy
from support.pg import query, throwaway_db

MIGRATIONS = example_dir() / "migrations"


@pytest.fixture
async def db() -> AsyncIterator[str]:
    async with throwaway_db("sydeploy") as url:
        yield url


async def events(api: AsyncApiClient, rollout_id: str) -> list[dict[str, Any]]:
    return (await api.get(f"/v1/rollouts/{rollout_id}"))["events"]


async def ledger(url: str) -> dict[str, str]:
    return dict(await query(url, "SELECT version, status FROM shipyard_migrations ORDER BY version"))


async def columns(url: str, table: str) -> list[str]:
    rows = await query(url, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                            "AND NOT attisdropped ORDER BY attnum", table)
    return [r[0] for r in rows]


def migrations_with(tmp: Path, upto: int, extra: dict[str, str]) -> Path:
    """The shop's migrations up to `upto`, plus `extra` files: a migrations dir of this test."""
    d = tmp / "migrations"
    d.mkdir()
    for f in sorted(MIGRATIONS.glob("*.sql")):
        if int(f.name.split("_")[0]) <= upto:
            shutil.copy(f, d / f.name)
    for name, text in extra.items():
        (d / name).write_text(text)
    return d


async def test_expand_before_traffic_contract_after_the_old_release_is_gone(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, db: str) -> None:
    v1 = await deploy(api, make_spec("database/v1", **{"database.url": db}))
    assert v1["phase"] == "succeeded", v1
    assert await ledger(db) == {"0001": "applied", "0002": "applied"}
    async with httpx.AsyncClient(base_url=f"http://{listen}") as http:
        assert (await http.get("/products/1")).json()["code"] == "DC-001"      # v1 reads legacy_code

    spec2 = make_spec("database/v2", **{"database.url": db, "strategy.blue_green.scale_down_delay": "3s"})
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, path="/products") as traffic:
        v2 = await deploy(api, spec2)
        assert v2["phase"] == "succeeded", v2
    assert traffic.failures() == [] and len(traffic.samples) > 50
    assert await ledger(db) == {"0001": "applied", "0002": "applied", "0003": "applied", "0004": "applied"}
    assert "legacy_code" in await columns(db, "products")                     # 0005 is held back

    evs = await events(api, v2["id"])
    kinds = [e["kind"] for e in evs]
    applied = kinds.index("database.applied")
    started = next(i for i, e in enumerate(evs) if e["kind"] == "instance.started")
    assert applied < started, kinds            # expand ran before any instance of v2 existed
    plan = next(e for e in evs if e["kind"] == "database.plan")
    assert "held back (contract): 0005_drop_products_legacy_code" in plan["message"]
    assert "database.checked" in kinds         # rehearsed on a scratch copy first
    [svc] = (await api.get("/v1/dashboard/services"))["services"]     # what the dashboard shows of it
    assert (svc["database"]["rollout_id"], svc["database"]["check_ok"]) == (v2["id"], True)
    assert [e["kind"] for e in svc["database"]["events"]] == [e["kind"] for e in evs if e["kind"] in (
        "database.plan", "database.checked", "database.applied")]
    assert db not in json.dumps(svc)            # a public view: no connection string (it may hold a password)

    with pytest.raises(ConflictError, match="rollback window of shop is open"):
        await api.post("/v1/services/shop/db/contract")
    assert "legacy_code" in await columns(db, "products")

    deadline = time.monotonic() + 30
    while True:                                  # the warm v1 slot retires after scale_down_delay
        status = await api.get("/v1/services/shop")
        if all(s["state"] != "warm" for s in status["slots"].values()):
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.3)
    result = await api.post("/v1/services/shop/db/contract")
    assert result["applied"] == ["0005"], result
    assert "legacy_code" not in await columns(db, "products")
    async with httpx.AsyncClient(base_url=f"http://{listen}") as http:
        assert (await http.get("/products")).status_code == 200
        r = await http.post("/orders", json={"product": 2, "quantity": 1, "note": "gift"})
        assert r.status_code == 201, r.text
    assert await query(db, "SELECT note FROM orders") == [("gift",)]
    assert (await ledger(db))["0005"] == "applied"


async def wait_until_no_warm_slot(api: AsyncApiClient, service: str = "shop", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = await api.get(f"/v1/services/{service}")
        if all(s["state"] != "warm" for s in status["slots"].values()):
            return
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.3)


async def test_contract_after_a_deploy_whose_spec_names_its_migrations_relatively(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path, db: str) -> None:
    assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
    m2 = migrations_with(state_dir / "specs", 4, {"0005_drop_legacy.sql": (       # next to the spec file
        "ALTER TABLE products DROP COLUMN legacy_code;\n")})                        # contract by its rule, no mark
    m2.rename(state_dir / "specs" / "m2")
    spec2 = make_spec("database/v2", "v2-relative", **{
        "database.url": db, "database.migrations": "./m2", "strategy.blue_green.scale_down_delay": "1s"})
    assert (await deploy(api, spec2))["phase"] == "succeeded"
    assert "legacy_code" in await columns(db, "products")                       # held back
    await wait_until_no_warm_slot(api)
    result = await api.post("/v1/services/shop/db/contract")         # reads the live release's stored spec
    assert result["applied"] == ["0005"], result
    assert "legacy_code" not in await columns(db, "products")

    status = await asyncio.to_thread(sy, "db", "status", str(spec2), state=state_dir)
    row = next(line for line in status.stdout.splitlines() if "drop_legacy" in line)
    assert re.search(r"0005.*drop_legacy.*applied.*contract", row), status.stdout


async def test_compatibility_gate_stops_a_rename_the_live_release_cannot_survive(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, db: str, tmp_path: Path) -> None:
    assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
    migrations = migrations_with(tmp_path, 2, {"0003_rename_name.sql": (
        "-- shipyard:ignore rename-column we believe v1 does not read products.name\n"
        "ALTER TABLE products RENAME COLUMN name TO title;\n")})
    spec = make_spec("database/v2", "v2-title", **{
        "database.url": db, "database.migrations": str(migrations), "database.target": None,
        "build.files": {"release.toml": 'version = "2"\nproduct_name_column = "title"\n'}})
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, path="/products") as traffic:
        t0 = time.monotonic()
        r = await deploy(api, spec)
        await asyncio.sleep(0.2)
    assert r["phase"] == "failed", r
    assert "live release" in r["reason"] and "/products" in r["reason"] and "500" in r["reason"], r["reason"]
    assert set(traffic.versions(since=t0)) == {"1"} and traffic.failures() == []
    assert "name" in await columns(db, "products")                 # the real database was not touched
    assert "0003" not in await ledger(db)
    assert [row[0] for row in await query(
        "postgresql://postgres@127.0.0.1:5432/test",
        "SELECT datname FROM pg_database WHERE datname LIKE 'shipyard_check_%'")] == []
    status = await api.get("/v1/services/shop")
    assert status["live_slot"] == "blue" and status["slots"]["green"]["instances"] == []


async def test_a_held_back_rename_stops_the_deploy_before_the_new_release_starts(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, db: str, tmp_path: Path) -> None:
    assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
    migrations = migrations_with(tmp_path, 2, {"0003_rename_name.sql": (         # contract by its rule
        "ALTER TABLE products RENAME COLUMN name TO title;\n")})
    spec = make_spec("database/v2", "v2-title", **{
        "database.url": db, "database.migrations": str(migrations), "database.target": None,
        "build.files": {"release.toml": 'version = "2"\nproduct_name_column = "title"\n'}})
    checked = await api.post("/v1/db/check", {"spec_path": str(spec)})          # db check says so too
    assert not checked["ok"] and "0003_rename_name.sql:1" in checked["held_renames"], checked
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, path="/products") as traffic:
        t0 = time.monotonic()
        r = await deploy(api, spec)
        await asyncio.sleep(0.2)
    assert r["phase"] == "failed", r
    reason = r["reason"]
    assert "0003_rename_name.sql:1" in reason and "held back as a contract migration" in reason, reason
    for step in ("add the new column", "trigger", "backfill it in batches", "reads the new name",
                 "drop the trigger and the old column", "ADD COLUMN title text", "CREATE TRIGGER"):
        assert step in reason, (step, reason)
    assert "does not exist" not in reason                             # stopped before, not by, the failure
    kinds = [e["kind"] for e in await events(api, r["id"])]
    assert "instance.started" not in kinds, kinds                     # the new release never started
    assert set(traffic.versions(since=t0)) == {"1"} and traffic.failures() == []
    assert "name" in await columns(db, "products") and "0003" not in await ledger(db)


async def test_a_rename_in_the_suggested_expand_contract_form_keeps_both_releases_serving(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, db: str, tmp_path: Path) -> None:
    from shipyard.database.rules.tables import rename_column_steps
    assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
    expand, contract = rename_column_steps("products", "products", "name", "title", "text").split("-- 2. deploy")
    migrations = migrations_with(tmp_path, 2, {
        "0003_title_expand.sql": expand,
        "0004_title_contract.sql": "-- shipyard:contract\n" + contract.split("\n", 1)[1]})
    spec = make_spec("database/v2", "v2-title", **{
        "database.url": db, "database.migrations": str(migrations), "database.target": None,
        "strategy.blue_green.scale_down_delay": "1s",
        "build.files": {"release.toml": 'version = "2"\nproduct_name_column = "title"\n'}})
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, path="/products") as traffic:
        t0 = time.monotonic()
        r = await deploy(api, spec)
        await asyncio.sleep(0.3)
    assert r["phase"] == "succeeded", r
    assert set(traffic.versions(since=t0)) == {"1", "2"} and traffic.failures() == []    # both served, none failed
    assert (await ledger(db)) == {"0001": "applied", "0002": "applied", "0003": "applied"}
    await query(db, "INSERT INTO products (id, name, price) VALUES (6, 'Lantern', 12)")  # as v1 writes
    async with httpx.AsyncClient(base_url=f"http://{listen}") as http:
        assert (await http.get("/products/6")).json()["name"] == "Lantern"             # v2 reads title
        assert (await http.get("/products/1")).json()["name"] == "Deck chair"          # backfilled
    await wait_until_no_warm_slot(api)
    assert (await api.post("/v1/services/shop/db/contract"))["applied"] == ["0004"]
    assert "name" not in await columns(db, "products")
    async with httpx.AsyncClient(base_url=f"http://{listen}") as http:
        assert [p["name"] for p in (await http.get("/products")).json()][:2] == ["Deck chair", "Ship in a bottle"]


async def test_unsafe_migration_stops_the_deploy_unless_allowed_with_a_reason(
        api: AsyncApiClient, make_spec: SpecMaker, db: str, tmp_path: Path) -> None:
    assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
    migrations = migrations_with(tmp_path, 2, {"0003_total_index.sql": "CREATE INDEX orders_total ON orders (total);\n"})
    spec = make_spec("database/v2", "v2-index", **{"database.url": db, "database.migrations": str(migrations),
                                                   "database.target": None})
    r = await deploy(api, spec)
    assert r["phase"] == "failed" and "create-index-non-concurrent" in r["reason"], r
    assert "--allow-unsafe" in r["reason"]
    assert await query(db, "SELECT to_regclass('orders_total')") == [(None,)]
    assert (await api.get("/v1/services/shop"))["slots"]["green"]["instances"] == []

    r = await deploy(api, spec, allow_unsafe="orders holds 12 rows; the lock lasts milliseconds")
    assert r["phase"] == "succeeded", r
    assert await query(db, "SELECT to_regclass('orders_total')::text") == [("orders_total",)]
    audit = [e for e in await events(api, r["id"]) if e["kind"] == "audit.allow_unsafe"]
    assert audit and "orders holds 12 rows" in audit[0]["message"]


async def test_half_failed_migration_stops_the_deploy_and_records_what_was_applied(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, db: str, tmp_path: Path) -> None:
    assert (await deploy(api, make_spec("database/v1", **{"database.url": db})))["phase"] == "succeeded"
    migrations = migrations_with(tmp_path, 2, {"0003_two_steps.sql": (
        "-- shipyard:no-transaction\nCREATE TABLE coupons (code text PRIMARY KEY);\n"
        "INSERT INTO coupon_codes SELECT 1;\n")})
    spec = make_spec("database/v2", "v2-half", **{"database.url": db, "database.migrations": str(migrations),
                                                  "database.target": None, "database.check.enabled": False})
    r = await deploy(api, spec)
    assert r["phase"] == "failed" and "coupon_codes" in r["reason"], r
    assert "1 of its statements are applied and recorded" in r["reason"]
    rows = await query(db, "SELECT status, statements_applied FROM shipyard_migrations WHERE version = '0003'")
    assert rows == [("partial", 1)]
    async with httpx.AsyncClient(base_url=f"http://{listen}") as http:
        assert (await http.get("/")).headers["x-shop-version"] == "1"


async def test_unreachable_database_changes_nothing(api: AsyncApiClient, make_spec: SpecMaker) -> None:
    spec = make_spec("database/v1", **{"database.url": "postgresql://postgres@127.0.0.1:1/shop"})
    r = await deploy(api, spec)
    assert r["phase"] == "failed", r
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/shop" in r["reason"], r["reason"]
    status = await api.get("/v1/services/shop")
    assert all(s["instances"] == [] for s in status["slots"].values())


async def test_unparseable_migration_stops_the_deploy_before_anything_runs(
        api: AsyncApiClient, make_spec: SpecMaker, db: str, tmp_path: Path) -> None:
    migrations = migrations_with(tmp_path, 2, {"0003_typo.sql": "SELECT 1;\nALTER TABLE orders ADDD COLUMN x int;\n"})
    spec = make_spec("database/v1", **{"database.url": db, "database.migrations": str(migrations),
                                       "database.target": None})
    r = await deploy(api, spec)
    assert r["phase"] == "failed", r
    assert "0003_typo.sql:2" in r["reason"] and "syntax error" in r["reason"], r["reason"]
    assert await query(db, "SELECT to_regclass('products'), to_regclass('shipyard_migrations')") == [(None, None)]
    # a first release that ended before it served is unregistered (after the failure is stored):
    # no instance, no service record left
    deadline = time.monotonic() + 10
    while True:
        try:
            status = await api.get("/v1/services/shop")
        except NotFoundError:
            break
        assert all(s["instances"] == [] for s in status["slots"].values()), status
        assert time.monotonic() < deadline, f"shop still registered 10 s after its first release failed: {status}"
        await asyncio.sleep(0.05)
