"""The scratch copy against the real PostgreSQL: schema and a bounded sample arrive, and the
copy is gone afterwards however the block ends - normally, by an exception, by a
cancelled task, or (swept by the next check) after its process was SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql

from shipyard.database.connect import DatabaseUnavailable, connect
from shipyard.database.scratch import ScratchDatabase, ScratchError, drop_stale_scratch, pg_tool
from support.pg import throwaway_db

SERVER = "postgresql://postgres@127.0.0.1:5432/test"

SCHEMA = """
CREATE SCHEMA inventory;
CREATE TABLE parent (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE child (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id int NOT NULL REFERENCES parent (id),
    v int NOT NULL,
    doubled int GENERATED ALWAYS AS (v * 2) STORED
);
CREATE INDEX child_v ON child (v);
CREATE TABLE inventory.stock (sku text PRIMARY KEY, qty int CHECK (qty >= 0));
CREATE MATERIALIZED VIEW parent_names AS SELECT name FROM parent;
INSERT INTO parent (name) SELECT 'p' || i FROM generate_series(1, 300) i;
-- children point at the last parents: a sample of parent's first rows would not contain them
INSERT INTO child (parent_id, v) SELECT 300 - (i % 50), i FROM generate_series(1, 500) i;
INSERT INTO inventory.stock SELECT 'sku' || i, i FROM generate_series(1, 20) i;
"""


async def exists(name: str) -> bool:
    async with await connect(SERVER) as admin:
        row = await (await admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))).fetchone()
    return bool(row and row[0])


async def drop(name: str) -> None:
    async with await connect(SERVER) as admin:
        await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
async def source_url() -> AsyncIterator[str]:
    async with throwaway_db("sy_src") as url:
        async with await connect(url) as conn:
            await conn.execute(SCHEMA.encode())
        yield url


async def values(url: str, query: str) -> list[tuple[object, ...]]:
    async with await connect(url) as conn:
        return await (await conn.execute(query.encode())).fetchall()


async def test_copy_has_the_schema_and_at_most_n_rows_per_table(source_url: str) -> None:
    async with ScratchDatabase.copy_of(source_url, sample_rows=100) as scratch:
        assert scratch.name.startswith(f"shipyard_check_{os.getpid()}_")
        assert scratch.url.endswith("/" + scratch.name)
        assert scratch.rows_copied == {"child": 100, "inventory.stock": 20, "parent": 100}
        assert scratch.sample_skipped == {}
        counts = await values(scratch.url, "SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child), "
                                           "(SELECT count(*) FROM inventory.stock)")
        assert counts == [(100, 100, 20)]
        indexes = await values(scratch.url, "SELECT indexname FROM pg_indexes WHERE schemaname IN "
                                            "('public', 'inventory') ORDER BY 1")
        assert [i for (i,) in indexes] == ["child_pkey", "child_v", "parent_pkey", "stock_pkey"]
        fks = await values(scratch.url, "SELECT conname FROM pg_constraint WHERE contype = 'f'")
        assert fks == [("child_parent_id_fkey",)]
        # the sample's children reference parents outside the parent sample: only possible because FK triggers
        # were off while copying
        orphans = await values(scratch.url, "SELECT count(*) FROM child c LEFT JOIN parent p ON p.id = c.parent_id "
                                            "WHERE p.id IS NULL")
        assert orphans[0][0] > 0
        async with await connect(scratch.url) as conn:
            # the generated column is computed in the copy, sequences continue after the source's values,
            # and the foreign key is enforced again for new rows
            row = await (await conn.execute("INSERT INTO parent (name) VALUES ('new') RETURNING id")).fetchone()
            assert row == (301,)
            row = await (await conn.execute("INSERT INTO child (parent_id, v) VALUES (301, 21) "
                                            "RETURNING id, doubled")).fetchone()
            assert row == (501, 42)
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                await conn.execute("INSERT INTO child (parent_id, v) VALUES (99999, 1)")
            assert await (await conn.execute("SELECT count(*) FROM parent_names")).fetchone() == (100,)
        name = scratch.name
    assert not await exists(name)


async def test_sample_rows_zero_copies_the_schema_only(source_url: str) -> None:
    async with ScratchDatabase.copy_of(source_url, sample_rows=0) as scratch:
        assert await values(scratch.url, "SELECT count(*) FROM child") == [(0,)]
        assert scratch.rows_copied == {}


async def test_a_table_whose_rows_cannot_be_copied_is_reported_and_the_rest_copied(source_url: str) -> None:
    async with await connect(source_url) as conn:      # existing rows break a constraint added NOT VALID
        await conn.execute("ALTER TABLE inventory.stock ADD CONSTRAINT few CHECK (qty < 5) NOT VALID")
    async with ScratchDatabase.copy_of(source_url, sample_rows=50) as scratch:
        assert list(scratch.sample_skipped) == ["inventory.stock"]
        assert "few" in scratch.sample_skipped["inventory.stock"]
        assert scratch.rows_copied == {"child": 50, "parent": 50}
        assert await values(scratch.url, "SELECT count(*) FROM child") == [(50,)]


async def test_dropped_after_an_exception_which_passes_unchanged(source_url: str) -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with ScratchDatabase.copy_of(source_url, sample_rows=10) as scratch:
            names.append(scratch.name)
            assert await exists(scratch.name)
            raise RuntimeError("boom")
    assert names and not await exists(names[0])


async def test_dropped_when_the_task_is_cancelled(source_url: str) -> None:
    inside = asyncio.Event()
    names: list[str] = []

    async def check() -> None:
        async with ScratchDatabase.copy_of(source_url, sample_rows=10) as scratch:
            names.append(scratch.name)
            async with await connect(scratch.url):          # an open session does not stop the drop
                inside.set()
                await asyncio.sleep(60)

    task = asyncio.create_task(check())
    await asyncio.wait_for(inside.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await exists(names[0])


async def test_dropped_when_cancelled_while_copying(source_url: str) -> None:
    task = asyncio.create_task(ScratchDatabase.copy_of(source_url, sample_rows=10).__aenter__())
    for _ in range(200):                                   # wait until CREATE DATABASE happened
        found = await values(SERVER, f"SELECT datname FROM pg_database WHERE datname LIKE "
                                     f"'shipyard\\_check\\_{os.getpid()}\\_%'")
        if found or task.done():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert found, "the copy finished before it could be interrupted"
    assert not await exists(found[0][0])


async def test_stale_copy_of_a_killed_process_is_swept(source_url: str) -> None:
    code = textwrap.dedent(f"""
        import asyncio, sys
        from shipyard.database.scratch import ScratchDatabase
        async def main():
            async with ScratchDatabase.copy_of({source_url!r}, sample_rows=10) as s:
                print(s.name, flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    name = ""
    try:
        assert proc.stdout is not None
        name = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        name = name.strip()
        assert name.startswith(f"shipyard_check_{proc.pid}_")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert await exists(name)                     # SIGKILL: no chance to clean up
        live_name = ""
        async with ScratchDatabase.copy_of(source_url, sample_rows=0) as live:
            live_name = live.name
            assert not await exists(name)             # swept when the next check starts
            assert live_name not in await drop_stale_scratch(SERVER)   # a live process's copy stays
            assert await exists(live_name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if name:
            await drop(name)


async def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        async with ScratchDatabase.copy_of("postgresql://postgres@127.0.0.1:1/test"):
            pass


def test_missing_client_tool_is_a_clear_error() -> None:
    with pytest.raises(ScratchError, match="pg_nonexistent_tool not found"):
        pg_tool("pg_nonexistent_tool", 15)
    assert pg_tool("pg_dump", 15).endswith("pg_dump")
