"""observe_apply against the real PostgreSQL: it must see what really happens - a table
rewrite, an ACCESS EXCLUSIVE lock that stalls the application's reads, a SHARE lock that
stalls only its writes, a CONCURRENTLY build seen by the monitor - and judge it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from shipyard.database.connect import connect
from shipyard.database.observe import CheckReport, ProbeStats, observe_apply
from shipyard.database.statements import parse_script
from support.pg import throwaway_db


@pytest.fixture
async def db_url() -> AsyncIterator[str]:
    async with throwaway_db("sy_obs") as url:
        async with await connect(url) as conn:
            await conn.execute("CREATE TABLE products (id int PRIMARY KEY, v int NOT NULL, note text)")
            await conn.execute("INSERT INTO products SELECT i, i % 1000, 'n' || i FROM generate_series(1, 20000) i")
            await conn.execute("CREATE TABLE orders (id int PRIMARY KEY, product_id int)")
            await conn.execute("ANALYZE")
        yield url


def probe(report: CheckReport, table: str, kind: str) -> ProbeStats:
    return next(p for p in report.probes if p.table == table and p.kind == kind)


async def test_sees_a_rewrite_under_access_exclusive(db_url: str) -> None:
    scripts = [parse_script("ALTER TABLE products ADD COLUMN r float8 DEFAULT random();\n", "0001_rand.sql"),
               parse_script("ALTER TABLE products ADD COLUMN c int DEFAULT 0;\n", "0002_const.sql")]
    report = await observe_apply(db_url, scripts, lock_timeout=5, max_stall=10)
    volatile, constant = report.statements
    assert volatile.rewritten == ["products"]
    assert volatile.locks["products"][0] == "ACCESS EXCLUSIVE"
    assert constant.rewritten == []                         # PostgreSQL >= 11: a constant default is metadata
    assert constant.locks["products"][0] == "ACCESS EXCLUSIVE"
    assert volatile.duration > 0 and volatile.in_transaction
    assert volatile.locks_held >= volatile.duration          # held until its transaction committed
    assert {(p.table, p.kind) for p in report.probes} == {("products", "read"), ("products", "write")}
    assert all(p.count > 0 and p.errors == 0 for p in report.probes)
    assert report.ok, report.reasons
    json.dumps(report.to_dict())


async def test_an_access_exclusive_lock_stalls_reads_and_fails_the_verdict(db_url: str) -> None:
    script = parse_script("LOCK TABLE products IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep(0.5);\n", "0003_lock.sql")
    report = await observe_apply(db_url, [script], lock_timeout=5, max_stall=0.2)
    reads, writes = probe(report, "products", "read"), probe(report, "products", "write")
    assert reads.longest_stall >= 0.4 and writes.longest_stall >= 0.4
    assert reads.blocked_by == ["0003_lock.sql:1"]
    assert not report.ok
    assert any(r.startswith("products: reads blocked ") and "by 0003_lock.sql:1 LOCK TABLE products" in r
               and "(ACCESS EXCLUSIVE)" in r for r in report.reasons), report.reasons
    assert report.statements[0].locks == {"products": ["ACCESS EXCLUSIVE"]}
    assert report.statements[1].locks == {}                 # took nothing new: the lock is the first one's
    assert report.failed_statement is None


async def test_create_index_blocks_writes_but_not_reads(db_url: str) -> None:
    script = parse_script("CREATE INDEX products_v ON products (v);\nSELECT pg_sleep(0.5);\n", "0004_index.sql")
    report = await observe_apply(db_url, [script], lock_timeout=5, max_stall=0.3)
    assert report.statements[0].locks == {"products": ["SHARE"]}
    writes, reads = probe(report, "products", "write"), probe(report, "products", "read")
    assert writes.longest_stall >= 0.4
    assert reads.longest_stall < 0.3
    assert not report.ok
    assert [r for r in report.reasons if r.startswith("products: ")] == [
        r for r in report.reasons if r.startswith("products: writes blocked ") and "(SHARE)" in r]


async def test_monitor_sees_the_lock_of_a_concurrent_index_build(db_url: str) -> None:
    async with await connect(db_url) as conn:
        await conn.execute("INSERT INTO products SELECT i, i % 1000 FROM generate_series(20001, 120000) i")
    script = parse_script("CREATE INDEX CONCURRENTLY products_v ON products (v);\n", "0005_concurrently.sql")
    assert not script.transactional
    report = await observe_apply(db_url, [script], lock_timeout=5, max_stall=10)
    [build] = report.statements
    assert not build.in_transaction and build.error is None
    assert "SHARE UPDATE EXCLUSIVE" in build.locks["products"]
    assert "SHARE" not in build.locks["products"]
    assert build.rewritten == []


async def test_a_lock_timeout_stops_the_check_and_says_why(db_url: str) -> None:
    scripts = [parse_script("ALTER TABLE orders ADD COLUMN note text;\n", "0006_note.sql"),
               parse_script("ALTER TABLE orders ADD COLUMN other text;\n", "0007_other.sql")]
    blocker = await connect(db_url, autocommit=False)
    try:
        await blocker.execute("SELECT * FROM orders")       # a long transaction that read the table
        report = await observe_apply(db_url, scripts, lock_timeout=0.2, max_stall=10)
    finally:
        await blocker.close()
    assert [s.location for s in report.statements] == ["0006_note.sql:1"]    # the second one never ran
    failed = report.failed_statement
    assert failed is not None and failed.sqlstate == "55P03"
    assert failed.locks == {"orders": ["ACCESS EXCLUSIVE"]}                  # what it queued for
    assert failed.lock_wait >= 0.1
    assert not report.ok
    assert report.reasons[0].startswith("0006_note.sql:1 failed: ") and "lock_timeout 0.2 s" in report.reasons[0]


async def test_only_existing_tables_are_probed_and_a_new_table_is_no_rewrite(db_url: str) -> None:
    script = parse_script("CREATE TABLE fresh (id int);\nINSERT INTO fresh SELECT id FROM orders;\n",
                          "0008_fresh.sql")
    report = await observe_apply(db_url, [script], lock_timeout=5, max_stall=10)
    assert {p.table for p in report.probes} == {"orders"}
    assert all(s.rewritten == [] for s in report.statements)
    assert report.statements[1].locks == {"fresh": ["ROW EXCLUSIVE"], "orders": ["ACCESS SHARE"]}
    assert report.ok
