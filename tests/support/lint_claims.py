"""What the lint claims test observes on the real PostgreSQL: the fixture schema, the lock a
statement's session holds (or waits for) in pg_locks, whether a table got a new file with the
same rows, and the table's scan counter. Shared by tests/integration/test_db_lint_claims.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import psycopg

from shipyard.database import locks
from shipyard.database.connect import connect, server_version
from shipyard.database.findings import Finding
from shipyard.database.lint import Catalog, lint_scripts
from shipyard.database.statements import parse_script

URL = "postgresql://postgres@127.0.0.1:5432/test"

SETUP = """
CREATE TABLE o (id int PRIMARY KEY);
INSERT INTO o SELECT generate_series(1, 50);
CREATE TABLE t (id int PRIMARY KEY, name varchar(20), note text, price numeric(10,2), ts timestamp(3),
                addr cidr, code char(5), o_id int, email text, bits varbit(8), at time(2),
                CONSTRAINT t_email_nn CHECK (email IS NOT NULL));
INSERT INTO t SELECT g, 'n' || g, 'note', g, now(), '10.0.0.0/8', 'ab', 1 + g % 50, 'e' || g, B'101', '12:00'
  FROM generate_series(1, 200) g;
CREATE INDEX t_name_idx ON t (name);
CREATE TABLE child (id int, o_id int REFERENCES o (id));
INSERT INTO child SELECT g, g FROM generate_series(1, 50) g;
CREATE TABLE e (id int);
CREATE TABLE p (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
INSERT INTO p SELECT g, g FROM generate_series(0, 99) g;
CREATE UNLOGGED TABLE u (id int);
INSERT INTO u SELECT generate_series(1, 50);
CREATE TABLE d (id int, status text NOT NULL DEFAULT 'new');
INSERT INTO d SELECT generate_series(1, 50);
CREATE TYPE mood AS ENUM ('sad', 'ok');
ANALYZE o, t, child, e, p, u, d;
"""


@dataclass(frozen=True)
class Claim:
    rule: str | None
    """The rule that must flag `sql`; None for a safe rewrite no rule may flag."""
    sql: str
    table: str
    """The table whose lock, file and scans are observed."""
    prepare: tuple[str, ...] = ()
    """Committed before (and linted as an earlier migration)."""
    before: tuple[str, ...] = ()
    """Run first in the same transaction (and linted in the same file)."""
    lock: str | None = None
    rewrite: bool = False
    scan: bool = False
    """Expectations for safe rewrites (for flagged statements they come from the finding)."""
    others: dict[str, str] = field(default_factory=dict)
    """Other tables and the lock the statement must take on them."""
    outside_transaction: bool = False



@dataclass
class Observed:
    locks: dict[str, str]
    """table -> strongest mode the statement's session held (or waited for) on it."""
    rewrite: bool
    scans: int | None


@asynccontextmanager
async def claims_schema() -> AsyncIterator[tuple[psycopg.AsyncConnection, str]]:
    """A connection whose search_path is a new schema holding SETUP (dropped afterwards)."""
    schema = f"lint_{uuid.uuid4().hex[:12]}"
    conn = await connect(URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path = {schema}")
        await conn.execute(SETUP)
        yield conn, schema
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def scalar(conn: psycopg.AsyncConnection, sql: str, *args: object) -> object:
    cur = await conn.execute(sql, args or None)
    row = await cur.fetchone()
    return row[0] if row else None


async def table_oids(conn: psycopg.AsyncConnection, tables: list[str]) -> dict[str, int]:
    return {name: int(await scalar(conn, "SELECT %s::regclass::oid", name)) for name in tables}  # type: ignore[arg-type]


async def file_of(conn: psycopg.AsyncConnection, oid: int) -> tuple[object, object]:
    """(relfilenode, rows) of a relation by oid; rows only counted for a table that still exists."""
    node = await scalar(conn, "SELECT relfilenode FROM pg_class WHERE oid = %s::oid", oid)
    rows = await scalar(conn, f"SELECT count(*) FROM {await scalar(conn, 'SELECT %s::oid::regclass::text', oid)}") \
        if node is not None else None
    return node, rows


def rewritten(before: tuple[object, object], after: tuple[object, object]) -> bool:
    """A new file holding the same rows (TRUNCATE makes a new, empty one: not a rewrite)."""
    return after[0] is not None and after[0] != before[0] and after[1] == before[1]


async def held_locks(conn: psycopg.AsyncConnection, pid: int, oids: dict[str, int], granted: bool) -> dict[str, str]:
    cur = await conn.execute("SELECT relation, mode FROM pg_locks WHERE pid = %s AND locktype = 'relation' "
                             "AND granted = %s", (pid, granted))
    by_oid: dict[int, list[str]] = {}
    for relation, mode in await cur.fetchall():
        by_oid.setdefault(int(relation), []).append(locks.from_pg_locks(mode))
    return {name: locks.strongest(by_oid[oid]) or "" for name, oid in oids.items() if oid in by_oid}


async def observe_in_transaction(conn: psycopg.AsyncConnection, claim: Claim) -> Observed:
    tables = [claim.table, *claim.others]
    oids = await table_oids(conn, tables)
    seq_sql = "SELECT sum(seq_scan) FROM pg_stat_xact_user_tables WHERE relid = %s::oid"
    await conn.execute("BEGIN")
    try:
        for stmt in claim.before:
            await conn.execute(stmt)
        before = await file_of(conn, oids[claim.table])
        scans_before = await scalar(conn, seq_sql, oids[claim.table])
        await conn.execute(claim.sql)
        scans_after = await scalar(conn, seq_sql, oids[claim.table])
        scans = None if scans_after is None else int(scans_after) - int(scans_before or 0)  # type: ignore[arg-type]
        held = await held_locks(conn, conn.info.backend_pid, oids, granted=True)
        after = await file_of(conn, oids[claim.table])
    finally:
        await conn.execute("ROLLBACK")
    return Observed(held, rewritten(before, after), scans)


async def observe_outside_transaction(conn: psycopg.AsyncConnection, schema: str, claim: Claim) -> Observed:
    """Statements PostgreSQL refuses in a transaction: a blocker holds SHARE UPDATE EXCLUSIVE, the
    weakest mode that every DDL lock conflicts with (it lets the name lookup's ACCESS SHARE
    through), so the statement queues for its real lock and pg_locks shows the mode it asks for."""
    oids = await table_oids(conn, [claim.table])
    before = await file_of(conn, oids[claim.table])
    blocker = await connect(URL, autocommit=False)
    runner = await connect(URL)
    try:
        await blocker.execute(f"SET search_path = {schema}")
        await blocker.execute(f"LOCK TABLE {claim.table} IN SHARE UPDATE EXCLUSIVE MODE")
        await runner.execute(f"SET search_path = {schema}")
        pid = runner.info.backend_pid
        task = asyncio.create_task(runner.execute(claim.sql))
        waiting: dict[str, str] = {}
        for _ in range(500):
            waiting = await held_locks(conn, pid, oids, granted=False)
            if waiting or task.done():
                break
            await asyncio.sleep(0.01)
        await blocker.rollback()
        await asyncio.wait_for(task, 30)
    finally:
        await blocker.close()
        await runner.close()
    return Observed(waiting, rewritten(before, await file_of(conn, oids[claim.table])), None)


async def lint_claim(conn: psycopg.AsyncConnection, claim: Claim, catalog: Catalog, assume: bool) -> list[Finding]:
    scripts = [parse_script(";\n".join(claim.prepare), "0001_prepare.sql")] if claim.prepare else []
    body = ";\n".join([*claim.before, claim.sql]) + ";"
    if claim.outside_transaction:
        body = "-- shipyard:no-transaction\n" + body
    scripts.append(parse_script(body, "0002_claim.sql"))
    version = await server_version(conn)
    last = scripts[-1].statements[-1].line
    return [f for f in lint_scripts(scripts, version, assume_lock_timeout=assume, catalog=catalog)
            if f.source == "0002_claim.sql" and f.line == last]
