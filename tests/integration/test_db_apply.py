"""Applying migrations to a real PostgreSQL: the ledger commits with each migration, a
half-failed statement-by-statement file resumes where it stopped, lock_timeout is retried
with backoff, two migrators never run at once, and a cancelled run leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from shipyard.database import ledger
from shipyard.database.apply import MigrationFailed, MigrationLocked, apply_migrations
from shipyard.database.sources import Migration
from shipyard.database.statements import parse_script
from support.pg import query, throwaway_db


@pytest.fixture
async def db() -> AsyncIterator[str]:
    async with throwaway_db("syapply") as url:
        yield url


def mig(version: str, text: str) -> Migration:
    source = f"{version}_m.sql"
    return Migration(version=version, name="m", source=source, text=text, script=parse_script(text, source))


async def apply(url: str, ms: list[Migration], **kw: object) -> object:
    kw.setdefault("lock_timeout", 0.2)
    kw.setdefault("retries", 0)
    return await apply_migrations(url, ms, phases={m.version: "expand" for m in ms}, **kw)  # type: ignore[arg-type]


async def recorded(url: str) -> dict[str, ledger.Applied]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await ledger.read(conn)


async def test_applies_in_order_and_records_each(db: str) -> None:
    ms = [mig("0001", "CREATE TABLE items (id int primary key);"),
          mig("0002", "ALTER TABLE items ADD COLUMN sku text;\nINSERT INTO items VALUES (1, 'a');")]
    result = await apply(db, ms, service="shop", release="img1")
    assert result.applied == ["0001", "0002"]                          # type: ignore[attr-defined]
    rows = await recorded(db)
    assert [(v, r.status, r.statements_applied, r.service) for v, r in rows.items()] == [
        ("0001", "applied", 1, "shop"), ("0002", "applied", 2, "shop")]
    assert rows["0002"].checksum == ms[1].checksum
    assert await query(db, "SELECT id, sku FROM items") == [(1, "a")]


async def test_failed_transactional_migration_leaves_nothing(db: str) -> None:
    ms = [mig("0001", "CREATE TABLE a (id int);"),
          mig("0002", "CREATE TABLE b (id int);\nINSERT INTO nosuch VALUES (1);")]
    with pytest.raises(MigrationFailed) as e:
        await apply(db, ms)
    assert "0002_m failed" in e.value.message and "nosuch" in e.value.message and "0002_m.sql:2" in e.value.message
    assert "nothing of it was applied" in (e.value.hint or "")
    assert list(await recorded(db)) == ["0001"]
    assert await query(db, "SELECT to_regclass('b')") == [(None,)]


async def test_statement_by_statement_file_resumes_at_the_failed_statement(db: str) -> None:
    text = ("-- shipyard:no-transaction\nCREATE TABLE t1 (id int);\nCREATE TABLE t2 (id int);\n"
            "CREATE INDEX CONCURRENTLY t3_id ON t3 (id);\nCREATE TABLE t4 (id int);")
    m = mig("0001", text)
    with pytest.raises(MigrationFailed) as e:
        await apply(db, [m])
    assert "2 of its statements are applied and recorded" in (e.value.hint or "")
    row = (await recorded(db))["0001"]
    assert (row.status, row.statements_applied, row.statements_total) == ("partial", 2, 4)
    await query(db, "CREATE TABLE t3 (id int)")        # the operator fixes what was missing
    # t1 and t2 exist: re-running them (CREATE TABLE without IF NOT EXISTS) would fail - resume must skip them
    result = await apply(db, [m], resume={"0001": row.statements_applied})
    assert result.applied == ["0001"]                                  # type: ignore[attr-defined]
    row = (await recorded(db))["0001"]
    assert (row.status, row.statements_applied) == ("applied", 4)
    assert await query(db, "SELECT count(*) FROM pg_class WHERE relname IN ('t1','t2','t3_id','t4')") == [(4,)]


async def hold_lock(url: str, table: str, seconds: float, held: asyncio.Event) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(f"SELECT * FROM {table}")       # ACCESS SHARE until the transaction ends
        held.set()
        await asyncio.sleep(seconds)
        await conn.rollback()


async def test_lock_timeout_is_retried_with_backoff(db: str) -> None:
    await query(db, "CREATE TABLE busy (id int)")
    held = asyncio.Event()
    blocker = asyncio.create_task(hold_lock(db, "busy", 0.9, held))
    await held.wait()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        await asyncio.sleep(s)

    logs: list[str] = []
    result = await apply(db, [mig("0001", "ALTER TABLE busy ADD COLUMN x int;")], retries=4, sleep=sleep,
                         log=logs.append)
    await blocker
    assert result.applied == ["0001"] and result.retries >= 1          # type: ignore[attr-defined]
    assert sleeps[:2] == [0.5, 1.0][:len(sleeps[:2])]
    assert any("lock timeout" in line.lower() for line in logs)


async def test_lock_timeout_without_retries_fails_and_says_why(db: str) -> None:
    await query(db, "CREATE TABLE busy (id int)")
    held = asyncio.Event()
    blocker = asyncio.create_task(hold_lock(db, "busy", 1.0, held))
    await held.wait()
    try:
        with pytest.raises(MigrationFailed) as e:
            await apply(db, [mig("0001", "ALTER TABLE busy ADD COLUMN x int;")], retries=0)
        assert "lock could not be had within lock_timeout" in e.value.message
        assert "0001" not in await recorded(db)
    finally:
        await blocker


async def test_a_second_migrator_is_refused(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as other:
        await other.execute("SELECT pg_advisory_lock(%s)", (ledger.ADVISORY_KEY,))
        with pytest.raises(MigrationLocked, match="another process is migrating"):
            await apply(db, [mig("0001", "CREATE TABLE a (id int);")])
    assert await query(db, "SELECT to_regclass('a')") == [(None,)]


async def test_cancel_stops_the_statement_on_the_server(db: str) -> None:
    task = asyncio.create_task(apply(db, [mig("0001", "CREATE TABLE a (id int);\nSELECT pg_sleep(30);")]))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert await query(db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
                           "AND pid <> pg_backend_pid()") == [(0,)]
    assert await query(db, "SELECT to_regclass('a')") == [(None,)]
    assert await recorded(db) == {}


async def test_a_batched_backfill_that_commits_applies_without_a_mark(db: str) -> None:
    await query(db, "CREATE TABLE t (id int primary key, c int)")
    await query(db, "INSERT INTO t SELECT g, NULL FROM generate_series(1, 12000) g")
    backfill = mig("0001", "DO $$ BEGIN LOOP UPDATE t SET c = 0 WHERE ctid = ANY (ARRAY(SELECT ctid FROM t "
                           "WHERE c IS NULL LIMIT 5000)); EXIT WHEN NOT FOUND; COMMIT; END LOOP; END $$;")
    assert (await apply(db, [backfill])).applied == ["0001"]          # type: ignore[attr-defined]
    assert await query(db, "SELECT count(*) FROM t WHERE c IS NULL") == [(0,)]
    assert (await recorded(db))["0001"].status == "applied"
