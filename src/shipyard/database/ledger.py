"""The record of applied migrations, kept in the target database itself (table
shipyard_migrations), so it is true whichever machine ran them and survives anything that
happens to the daemon. A transactional migration's row is written in the migration's own
transaction; a statement-by-statement one records how far it got, so a run that failed
half-way resumes at the statement that failed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

TABLE = "shipyard_migrations"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    version text PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    phase text NOT NULL,
    status text NOT NULL,
    statements_applied integer NOT NULL,
    statements_total integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL DEFAULT 0,
    service text,
    release text,
    note text
)"""
# A migrator holds this session lock, so two deploys never migrate one database at once.
ADVISORY_KEY = 0x5348_4950   # "SHIP"


@dataclass(frozen=True)
class Applied:
    version: str
    name: str
    checksum: str
    phase: str                 # expand | contract
    status: str                # applied | partial
    statements_applied: int
    statements_total: int
    applied_at: datetime
    duration_ms: int
    service: str | None
    release: str | None
    note: str | None

    @property
    def complete(self) -> bool:
        return self.status == "applied"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["applied_at"] = self.applied_at.isoformat()
        return d


async def ensure_table(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(DDL)


async def read(conn: psycopg.AsyncConnection) -> dict[str, Applied]:
    """version -> record; empty when the table does not exist yet (nothing applied by shipyard)."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return {}
    cur = await conn.execute(
        f"SELECT version, name, checksum, phase, status, statements_applied, statements_total, applied_at, "
        f"duration_ms, service, release, note FROM {TABLE} ORDER BY applied_at, version")
    return {r[0]: Applied(*r) for r in await cur.fetchall()}


async def alembic_revision(conn: psycopg.AsyncConnection) -> str | None:
    """Alembic's own idea of the current revision (a project migrated before shipyard managed it)."""
    cur = await conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT version_num FROM alembic_version LIMIT 1")
    row = await cur.fetchone()
    return str(row[0]) if row else None


async def record(conn: psycopg.AsyncConnection, *, version: str, name: str, checksum: str, phase: str,
                 applied: int, total: int, duration_ms: int, service: str | None, release: str | None,
                 note: str | None = None) -> None:
    """Insert or advance a migration's row (on the caller's connection, so inside its transaction if any)."""
    status = "applied" if applied >= total else "partial"
    await conn.execute(
        f"INSERT INTO {TABLE} (version, name, checksum, phase, status, statements_applied, statements_total, "
        f"duration_ms, service, release, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        f"ON CONFLICT (version) DO UPDATE SET status = EXCLUDED.status, "
        f"statements_applied = EXCLUDED.statements_applied, applied_at = now(), "
        f"duration_ms = {TABLE}.duration_ms + EXCLUDED.duration_ms, note = EXCLUDED.note",
        (version, name, checksum, phase, status, applied, total, duration_ms, service, release, note))


async def try_lock(conn: psycopg.AsyncConnection) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def unlock(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
