"""An Alembic project as a migration source: shipyard runs Alembic's offline SQL per
revision, keeps alembic_version in step, and picks up a database Alembic migrated before."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from shipyard.database.apply import apply_migrations
from shipyard.database.plan import plan_migrations
from shipyard.database.sources import MigrationSourceError, from_alembic
from support.pg import query, throwaway_db

REVISIONS = {
    "a1_items.py": '''
from alembic import op
import sqlalchemy as sa
revision = "a1"
down_revision = None
def upgrade():
    op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text, nullable=False))
''',
    "b2_sku.py": '''
from alembic import op
import sqlalchemy as sa
revision = "b2"
down_revision = "a1"
def upgrade():
    op.add_column("items", sa.Column("sku", sa.Text))
''',
}


@pytest.fixture
async def db() -> AsyncIterator[str]:
    async with throwaway_db("syalembic") as url:
        yield url


def project(tmp: Path, url: str) -> Path:
    subprocess.run([sys.executable, "-m", "alembic", "init", str(tmp / "alembic")], check=True, capture_output=True,
                   cwd=tmp)
    ini = tmp / "alembic.ini"
    # the project connects through SQLAlchemy's psycopg 3 driver; shipyard only reads its offline SQL
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname",
                                           url.replace("postgresql://", "postgresql+psycopg://")))
    for name, text in REVISIONS.items():
        (tmp / "alembic" / "versions" / name).write_text(text)
    return ini


async def test_alembic_revisions_apply_and_alembic_agrees(tmp_path: Path, db: str) -> None:
    ini = project(tmp_path, db)
    ms = from_alembic(ini)
    assert [m.version for m in ms] == ["a1", "b2"]
    result = await apply_migrations(db, ms, phases={"a1": "expand", "b2": "expand"}, lock_timeout=1, retries=0)
    assert result.applied == ["a1", "b2"]
    assert await query(db, "SELECT version_num FROM alembic_version") == [("b2",)]
    assert await query(db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'items' "
                           "ORDER BY ordinal_position") == [("id",), ("name",), ("sku",)]
    current = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), "current"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert "b2 (head)" in current.stdout, current.stdout + current.stderr


async def test_a_database_alembic_migrated_before_is_picked_up(tmp_path: Path, db: str) -> None:
    ini = project(tmp_path, db)
    up = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "a1"], capture_output=True,
                        text=True, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        plan = await plan_migrations(conn, from_alembic(ini))
    assert plan.adopted_alembic == "a1"
    assert [m.version for m in plan.pending] == ["b2"] and [m.version for m in plan.expand] == ["b2"]


def test_a_broken_alembic_project_is_a_clear_error(tmp_path: Path) -> None:
    ini = project(tmp_path, "postgresql://postgres@127.0.0.1:5432/test")
    (tmp_path / "alembic" / "versions" / "c3_broken.py").write_text("revision = 'c3'\ndown_revision = 'zz'\n")
    with pytest.raises(MigrationSourceError) as e:
        from_alembic(ini)
    assert "alembic could not generate SQL" in e.value.message
