"""`shipyard db lint SPEC` judges on the live schema, exactly as the deploy plan does: a type
change that is rewrite-free only given the column's live type is clean for both, and
without a database lint says the old type is unknown. Real PostgreSQL, real CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from test_cli import sy

from support.pg import query, throwaway_db

WIDEN = ("SET lock_timeout = '1s';\n"
         "ALTER TABLE users ALTER COLUMN email TYPE varchar(100);\n"     # from varchar(50): no rewrite
         "ALTER TABLE users ALTER COLUMN bio TYPE text;\n"               # from varchar(200): no rewrite
         "ALTER TABLE users ALTER COLUMN visits TYPE bigint;\n")         # from integer: a rewrite


@pytest.fixture
async def db() -> AsyncIterator[str]:
    async with throwaway_db("sy_db_helper_lint") as url:
        await query(url, "CREATE TABLE users (id int PRIMARY KEY, email varchar(50), bio varchar(200), visits int)")
        await query(url, "INSERT INTO users SELECT i, 'u' || i, 'b', i FROM generate_series(1, 100) i")
        yield url


def spec_with(tmp_path: Path, url: str) -> Path:
    """A spec whose migrations directory is relative to the spec file, as users write it."""
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "0001_widen.sql").write_text(WIDEN)
    spec = tmp_path / "svc.yaml"
    spec.write_text(yaml.safe_dump({"service": "svc", "listen": "127.0.0.1:9", "run": {"command": ["true"]},
                                    "database": {"url": url, "migrations": "./m"}}))
    return spec


async def test_lint_of_a_spec_gives_the_deploy_plans_verdicts_on_the_live_types(
        tmp_path: Path, state_dir: Path, db: str) -> None:
    spec = spec_with(tmp_path, db)
    lint = sy("db", "lint", str(spec), "--json", state=state_dir)
    plan = sy("db", "status", str(spec), "--json", state=state_dir)      # plan_migrations: what a deploy judges by
    assert plan.returncode == 0, plan.stderr
    linted, planned = json.loads(lint.stdout), json.loads(plan.stdout)
    assert linted["findings"] == planned["findings"]
    assert [(f["rule"], f["line"]) for f in linted["findings"]] == [("alter-column-type", 4)], linted
    assert "from integer to bigint" in linted["findings"][0]["message"]
    assert lint.returncode == 1 and linted["blocking"] == planned["blocking"] == 1
    assert "judged on the live schema" in linted["note"]
    text = sy("db", "lint", str(spec), state=state_dir)
    assert "0001_widen.sql:2" not in text.stdout and "0001_widen.sql:3" not in text.stdout, text.stdout
    assert "0001_widen.sql:4" in text.stdout


def test_lint_of_a_spec_without_its_database_says_the_old_type_is_unknown(tmp_path: Path, state_dir: Path) -> None:
    spec = spec_with(tmp_path, "postgresql://postgres@127.0.0.1:1/nosuch")
    r = sy("db", "lint", str(spec), "--json", state=state_dir)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and "database unreachable" in doc["note"]
    by_line = {f["line"]: f for f in doc["findings"]}
    assert "old type is unknown without a database" in by_line[2]["message"]
    assert "old type is unknown without a database" in by_line[4]["message"]
