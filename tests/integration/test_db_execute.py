"""run_script against the real PostgreSQL: transaction boundaries, what stays applied when a
statement fails, and lock_timeout turning a lock wait into a retryable failure."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from shipyard.database.connect import connect
from shipyard.database.execute import StatementFailed, StatementHooks, run_script
from shipyard.database.statements import Statement, parse_script
from support.pg import throwaway_db


@pytest.fixture
async def db_url() -> AsyncIterator[str]:
    async with throwaway_db("sy_exec") as url:
        yield url


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    c = await connect(db_url)
    try:
        yield c
    finally:
        await c.close()


async def scalar(conn: psycopg.AsyncConnection, query: str) -> object:
    row = await (await conn.execute(query.encode())).fetchone()
    return row[0] if row else None


async def test_transactional_failure_applies_nothing(conn: psycopg.AsyncConnection) -> None:
    script = parse_script("CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\nINSERT INTO missing VALUES (1);\n",
                          "0001_a.sql")
    assert script.transactional
    with pytest.raises(StatementFailed) as info:
        await run_script(conn, script, lock_timeout=1)
    e = info.value
    assert (e.source, e.line, e.sqlstate, e.applied, e.lock_timeout) == ("0001_a.sql", 3, "42P01", 0, False)
    assert "missing" in e.server_message and "nothing of 0001_a.sql was applied" in str(e)
    assert await scalar(conn, "SELECT to_regclass('a')") is None
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_statement_by_statement_keeps_what_ran_before_the_failure(conn: psycopg.AsyncConnection) -> None:
    script = parse_script("-- shipyard:no-transaction\nCREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n"
                          "INSERT INTO a VALUES ('x');\nINSERT INTO a VALUES (3);\n", "0002_b.sql")
    assert not script.transactional
    with pytest.raises(StatementFailed) as info:
        await run_script(conn, script, lock_timeout=1)
    assert (info.value.line, info.value.applied, info.value.sqlstate) == (4, 2, "22P02")
    assert await scalar(conn, "SELECT array_agg(id) FROM a") == [1]


async def test_a_failing_begin_block_is_rolled_back_as_a_whole(conn: psycopg.AsyncConnection) -> None:
    script = parse_script("CREATE TABLE a (id int);\nBEGIN;\nINSERT INTO a VALUES (1);\nINSERT INTO a VALUES ('x');\n"
                          "COMMIT;\n", "0003_c.sql")
    with pytest.raises(StatementFailed) as info:
        await run_script(conn, script, lock_timeout=1)
    assert info.value.applied == 1              # only CREATE TABLE committed
    assert await scalar(conn, "SELECT count(*) FROM a") == 0
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_begin_without_commit_is_rolled_back_and_reported(conn: psycopg.AsyncConnection) -> None:
    script = parse_script("CREATE TABLE a (id int);\nBEGIN;\nINSERT INTO a VALUES (1);\n", "0004_d.sql")
    with pytest.raises(StatementFailed) as info:
        await run_script(conn, script, lock_timeout=1)
    assert (info.value.line, info.value.applied) == (2, 1)
    assert "never committed" in info.value.server_message
    assert await scalar(conn, "SELECT count(*) FROM a") == 0


async def test_lock_timeout_gives_up_on_a_held_lock_and_is_restored(db_url: str,
                                                                    conn: psycopg.AsyncConnection) -> None:
    await conn.execute("CREATE TABLE t (id int)")
    before = await scalar(conn, "SHOW lock_timeout")
    blocker = await connect(db_url, autocommit=False)
    try:
        await blocker.execute("SELECT * FROM t")           # ACCESS SHARE, held until the transaction ends
        script = parse_script("ALTER TABLE t ADD COLUMN c int;\n", "0005_e.sql")
        t0 = time.monotonic()
        with pytest.raises(StatementFailed) as info:
            await run_script(conn, script, lock_timeout=0.2)
        waited = time.monotonic() - t0
    finally:
        await blocker.close()
    assert info.value.lock_timeout and info.value.sqlstate == "55P03"
    assert 0.15 < waited < 2.0
    assert "lock_timeout" in str(info.value)
    assert await scalar(conn, "SHOW lock_timeout") == before
    await run_script(conn, script, lock_timeout=0.2)       # the blocker is gone: the retry succeeds
    assert await scalar(conn, "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass "
                              "AND attname = 'c'") == 1


async def test_hooks_see_each_statement_inside_its_transaction(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("CREATE TABLE t (id int)")
    seen: list[tuple[str, int, object, object]] = []

    async def before(statement: Statement) -> None:
        seen.append(("before", statement.line, None, None))

    async def after(statement: Statement, c: psycopg.AsyncConnection) -> None:
        modes = await scalar(c, "SELECT array_agg(mode ORDER BY mode) FROM pg_locks WHERE pid = pg_backend_pid() "
                                "AND relation = 't'::regclass")
        seen.append(("after", statement.line, modes, await scalar(c, "SHOW lock_timeout")))

    script = parse_script("ALTER TABLE t ADD COLUMN c int;\nINSERT INTO t VALUES (1, 2);\n", "0006_f.sql")
    await run_script(conn, script, lock_timeout=0.25, hooks=StatementHooks(before=before, after=after))
    assert seen == [("before", 1, None, None), ("after", 1, ["AccessExclusiveLock"], "250ms"),
                    ("before", 2, None, None), ("after", 2, ["AccessExclusiveLock", "RowExclusiveLock"], "250ms")]
    assert await scalar(conn, "SELECT c FROM t") == 2


async def test_failed_hook_runs_after_the_rollback(conn: psycopg.AsyncConnection) -> None:
    got: list[tuple[int, str | None, object]] = []

    async def failed(statement: Statement, error: StatementFailed) -> None:
        got.append((statement.line, error.sqlstate, await scalar(conn, "SELECT to_regclass('a')")))

    script = parse_script("CREATE TABLE a (id int);\nSELECT 1/0;\n", "0007_g.sql")
    with pytest.raises(StatementFailed):
        await run_script(conn, script, lock_timeout=1, hooks=StatementHooks(failed=failed))
    assert got == [(2, "22012", None)]


async def test_concurrent_index_runs_outside_a_transaction_and_text_is_sent_verbatim(
        conn: psycopg.AsyncConnection) -> None:
    await conn.execute("CREATE TABLE t (id int, note text)")
    script = parse_script("INSERT INTO t VALUES (1, '100% sure');\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n",
                          "0008_h.sql")
    assert not script.transactional
    await run_script(conn, script, lock_timeout=1)
    assert await scalar(conn, "SELECT note FROM t") == "100% sure"
    assert await scalar(conn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_id'::regclass") is True


async def test_a_connection_not_in_autocommit_is_given_back_as_it_was(db_url: str) -> None:
    c = await connect(db_url, autocommit=False)
    try:
        await run_script(c, parse_script("CREATE TABLE a (id int);\n", "0009_i.sql"), lock_timeout=1)
        assert c.autocommit is False
        await c.rollback()
        assert await scalar(c, "SELECT to_regclass('a')::text") == "a"      # it was committed
    finally:
        await c.close()


async def test_lock_timeout_must_be_positive(conn: psycopg.AsyncConnection) -> None:
    with pytest.raises(ValueError):
        await run_script(conn, parse_script("SELECT 1;\n", "x.sql"), lock_timeout=0)
