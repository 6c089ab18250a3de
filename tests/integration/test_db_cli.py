"""`shipyard db ...` and `deploy --allow-unsafe` as a user runs them: real subprocesses,
real PostgreSQL, exit codes and messages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_cli import sy

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import example_dir
from support import SpecMaker
from support.pg import query, throwaway_db

MIGRATIONS = example_dir() / "migrations"


@pytest.fixture
async def db() -> AsyncIterator[str]:
    async with throwaway_db("sycli") as url:
        yield url


def test_lint_exit_codes_and_messages(tmp_path: Path, state_dir: Path) -> None:
    ok = sy("db", "lint", str(MIGRATIONS), state=state_dir)
    assert ok.returncode == 0, ok.stderr
    assert "5 migration(s), 0 finding(s), none unsafe" in ok.stdout

    bad = tmp_path / "0007_bad.sql"
    bad.write_text("SET lock_timeout = '1s';\n\nALTER TABLE orders ADD COLUMN token double precision DEFAULT random();\n")
    r = sy("db", "lint", str(bad), state=state_dir)
    assert r.returncode == 1
    assert f"{bad}:3" in r.stdout and "add-column-volatile-default" in r.stdout and "safe rewrite" in r.stdout
    doc = json.loads(sy("db", "lint", str(bad), "--json", state=state_dir).stdout)
    assert [f["rule"] for f in doc["findings"]] == ["add-column-volatile-default"] and doc["blocking"] == 1

    ignored = tmp_path / "0008_ignored.sql"
    ignored.write_text("SET lock_timeout = '1s';\n-- shipyard:ignore add-column-volatile-default table is empty\n"
                       "ALTER TABLE orders ADD COLUMN token double precision DEFAULT random();\n")
    r = sy("db", "lint", str(ignored), state=state_dir)
    assert r.returncode == 0 and "ignored: table is empty" in r.stdout

    broken = tmp_path / "0009_broken.sql"
    broken.write_text("SELECT 1;\nALTER TABLE orders ADDD COLUMN x int;\n")
    r = sy("db", "lint", str(broken), state=state_dir)
    assert r.returncode == 2 and f"{broken}:2" in r.stderr and "syntax error" in r.stderr


def test_lint_knows_the_server_version(tmp_path: Path, state_dir: Path) -> None:
    f = tmp_path / "0001_default.sql"
    f.write_text("SET lock_timeout = '1s';\nALTER TABLE orders ADD COLUMN flag boolean DEFAULT false;\n")
    assert sy("db", "lint", str(f), "--pg-version", "15", state=state_dir).returncode == 0
    old = sy("db", "lint", str(f), "--pg-version", "10", state=state_dir)
    assert old.returncode == 1 and "add-column-default-rewrite" in old.stdout


async def test_status_lint_and_check_of_a_spec(make_spec: SpecMaker, state_dir: Path, db: str,
                                               daemon: DaemonProcess) -> None:
    v1 = make_spec("database/v1", **{"database.url": db})
    r = sy("db", "status", str(v1), state=state_dir)
    assert r.returncode == 0 and "pending (expand)" in r.stdout, r.stdout + r.stderr
    api = AsyncApiClient(daemon.paths, timeout=120)
    try:
        rollout = (await api.post("/v1/deploy", {"spec_path": str(v1)}))["rollout"]
        assert (await api.wait_rollout(rollout["id"]))["phase"] == "succeeded"
    finally:
        await api.aclose()
    v2 = make_spec("database/v2", **{"database.url": db})
    doc = json.loads(sy("db", "status", str(v2), "--json", state=state_dir).stdout)
    assert [m["version"] for m in doc["pending"]] == ["0003", "0004", "0005"]
    assert doc["expand"] == ["0003", "0004"] and doc["held"] == ["0005"]
    lint = sy("db", "lint", str(v2), state=state_dir)          # the pending ones, against the live catalog
    assert lint.returncode == 0 and "3 migration(s), 1 finding(s), none unsafe" in lint.stdout, lint.stdout
    assert "0005_drop_products_legacy_code.sql:5  warning  drop-column" in lint.stdout   # a marked contract

    r = sy("db", "check", str(v2), state=state_dir, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "live release" in r.stdout and "new release" in r.stdout and "database check passed" in r.stdout
    assert "0003_orders_note.sql" in r.stdout
    assert await query(db, "SELECT count(*) FROM shipyard_migrations") == [(2,)]     # a check changes nothing

    r = sy("deploy", "-f", str(v2), "--allow-unsafe", "  ", state=state_dir)
    assert r.returncode == 2 and "--allow-unsafe needs a reason" in r.stderr


def test_unreachable_database_is_a_clear_error(make_spec: SpecMaker, state_dir: Path) -> None:
    spec = make_spec("database/v1", **{"database.url": "postgresql://postgres@127.0.0.1:1/shop"})
    r = sy("db", "status", str(spec), state=state_dir)
    assert r.returncode == 1
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/shop" in r.stderr and "hint:" in r.stderr
