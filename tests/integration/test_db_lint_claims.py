"""The lint rules' claims, checked on the real PostgreSQL: for each statement a rule flags,
the table lock it says the statement takes is the one pg_locks shows, it says "rewrite"
exactly when the table gets a new file with the same rows, and "scan" when the statement
reads the table. The safe rewrites the rules recommend are held to their claims the same
way. Every case runs in its own schema (dropped afterwards) and inside a transaction that
is rolled back, except the statements PostgreSQL refuses in one: those are observed from
another session while a blocker makes them wait for their lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg
import pytest

from shipyard.database import locks
from shipyard.database.connect import connect, major_of, server_version
from shipyard.database.lint import lint_scripts, load_catalog
from shipyard.database.rules.catalog import ALTER_TABLE, STATEMENTS, Entry, Example
from shipyard.database.statements import parse_script
from support.lint_claims import (
    URL,
    Claim,
    claims_schema,
    lint_claim,
    observe_in_transaction,
    observe_outside_transaction,
    scalar,
)


@pytest.fixture
async def db() -> AsyncIterator[tuple[psycopg.AsyncConnection, str]]:
    async with claims_schema() as pair:
        yield pair


AE, SRE, SUE, SHARE = "ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE"

FLAGGED = [
    Claim("add-column-volatile-default", "ALTER TABLE t ADD COLUMN r float DEFAULT random()", "t"),
    Claim("add-column-volatile-default", "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid()", "t"),
    Claim("add-column-stored-generated", "ALTER TABLE t ADD COLUMN twice int GENERATED ALWAYS AS (id * 2) STORED",
          "t"),
    Claim("add-column-identity", "ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY", "t"),
    Claim("add-column-identity", "ALTER TABLE t ADD COLUMN n bigserial", "t"),
    Claim("add-column-not-null-no-default", "ALTER TABLE e ADD COLUMN flag boolean NOT NULL", "e"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN id TYPE bigint", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN name TYPE varchar(10)", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN price TYPE numeric(12,3)", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN code TYPE char(10)", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN bits TYPE varbit(4)", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN at TYPE time(0)", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN name TYPE varchar(30) USING upper(name)", "t"),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", "t",
          before=("SET LOCAL TimeZone = 'Europe/Berlin'",)),
    Claim("alter-column-type", "ALTER TABLE t ALTER COLUMN ts TYPE timestamptz(3)", "t",
          before=("SET LOCAL TimeZone = 'UTC'",)),
    Claim("create-index-non-concurrent", "CREATE INDEX t_note_idx ON t (note)", "t"),
    Claim("drop-index-non-concurrent", "DROP INDEX t_name_idx", "t"),
    Claim("add-foreign-key-validating", "ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (o_id) REFERENCES o (id)", "t",
          others={"o": SRE}),
    Claim("add-foreign-key-validating", "ALTER TABLE t ADD COLUMN o2 int DEFAULT 1 REFERENCES o (id)", "t",
          others={"o": SRE}),
    Claim("add-check-validating", "ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0)", "t"),
    Claim("validate-in-same-transaction", "ALTER TABLE t VALIDATE CONSTRAINT t_pos", "t",
          before=("ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0) NOT VALID",)),
    Claim("validate-in-same-transaction", "ALTER TABLE t VALIDATE CONSTRAINT t_o", "t",
          before=("ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (o_id) REFERENCES o (id) NOT VALID",),
          others={"o": SRE}),
    Claim("set-not-null", "ALTER TABLE t ALTER COLUMN note SET NOT NULL", "t"),
    Claim("add-unique-without-index", "ALTER TABLE t ADD CONSTRAINT t_name_key UNIQUE (name)", "t"),
    Claim("rename-column", "ALTER TABLE t RENAME COLUMN note TO remark", "t"),
    Claim("rename-table", "ALTER TABLE t RENAME TO things", "t"),
    Claim("drop-column", "ALTER TABLE t DROP COLUMN note", "t"),
    Claim("drop-table", "DROP TABLE child", "child"),
    Claim("reindex-non-concurrent", "REINDEX TABLE t", "t"),
    Claim("reindex-non-concurrent", "REINDEX INDEX t_name_idx", "t"),
    Claim("vacuum-full", "VACUUM FULL t", "t", outside_transaction=True),
    Claim("cluster", "CLUSTER t USING t_name_idx", "t"),
    Claim("detach-partition-non-concurrent", "ALTER TABLE p DETACH PARTITION p1", "p", others={"p1": AE}),
    Claim("truncate-cascade", "TRUNCATE o CASCADE", "o", others={"child": AE}),
    Claim("truncate", "TRUNCATE child", "child"),
    Claim("whole-table-write", "UPDATE t SET note = 'x'", "t"),
    Claim("whole-table-write", "DELETE FROM child", "child"),
    Claim("lock-table", "LOCK TABLE t IN SHARE MODE", "t"),
    Claim("lock-table", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "t"),
    Claim("set-logged", "ALTER TABLE u SET LOGGED", "u"),
    Claim("set-logged", "ALTER TABLE t SET UNLOGGED", "t"),
    Claim("drop-default-not-null", "ALTER TABLE d ALTER COLUMN status DROP DEFAULT", "d"),
    Claim("table-rewrite", "ALTER TABLE t SET ACCESS METHOD heap2", "t",
          before=("CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler",)),
]

SAFE = [
    Claim(None, "ALTER TABLE t ADD COLUMN created timestamptz DEFAULT now()", "t", lock=AE),
    Claim(None, "ALTER TABLE t ADD COLUMN n int NOT NULL DEFAULT 0", "t", lock=AE),
    Claim(None, "ALTER TABLE t ADD COLUMN o3 int REFERENCES o (id)", "t", lock=AE, others={"o": SRE}),
    Claim(None, "ALTER TABLE t ALTER COLUMN name TYPE varchar(40)", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN name TYPE text", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN note TYPE varchar", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN price TYPE numeric(12,2)", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN price TYPE numeric", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN addr TYPE inet", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN ts TYPE timestamp(6)", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", "t", lock=AE,
          before=("SET LOCAL TimeZone = 'UTC'",)),
    Claim(None, "ALTER TABLE t ALTER COLUMN ts TYPE timestamp(4)", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN bits TYPE varbit(16)", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN at TYPE time(4)", "t", lock=AE),
    Claim(None, "ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (o_id) REFERENCES o (id) NOT VALID", "t", lock=SRE,
          others={"o": SRE}),
    Claim(None, "ALTER TABLE t VALIDATE CONSTRAINT t_o", "t", lock=SUE, scan=True, others={"o": "ROW SHARE"},
          prepare=("ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (o_id) REFERENCES o (id) NOT VALID",)),
    Claim(None, "ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0) NOT VALID", "t", lock=AE),
    Claim(None, "ALTER TABLE t VALIDATE CONSTRAINT t_pos", "t", lock=SUE, scan=True,
          prepare=("ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0) NOT VALID",)),
    Claim(None, "ALTER TABLE t ALTER COLUMN email SET NOT NULL", "t", lock=AE),
    Claim(None, "ALTER TABLE t ALTER COLUMN note SET NOT NULL", "t", lock=AE,
          prepare=("ALTER TABLE t ADD CONSTRAINT t_note_nn CHECK (note IS NOT NULL) NOT VALID",
                   "ALTER TABLE t VALIDATE CONSTRAINT t_note_nn")),
    Claim(None, "ALTER TABLE t ADD CONSTRAINT t_name_key UNIQUE USING INDEX t_name_uq", "t", lock=AE,
          prepare=("CREATE UNIQUE INDEX CONCURRENTLY t_name_uq ON t (name)",)),
    Claim(None, "CREATE INDEX CONCURRENTLY t_note_idx ON t (note)", "t", lock=SUE, outside_transaction=True),
    Claim(None, "DROP INDEX CONCURRENTLY t_name_idx", "t", lock=SUE, outside_transaction=True),
    Claim(None, "REINDEX TABLE CONCURRENTLY t", "t", lock=SUE, outside_transaction=True),
    Claim(None, "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", "p", lock=SUE, outside_transaction=True),
    Claim(None, "VACUUM t", "t", lock=SUE, outside_transaction=True),
    Claim(None, "UPDATE t SET note = 'x' WHERE ctid = ANY (ARRAY(SELECT ctid FROM t WHERE note <> 'x' LIMIT 5000))",
          "t", lock="ROW EXCLUSIVE", scan=True),
    Claim(None, "DELETE FROM child WHERE ctid = ANY (ARRAY(SELECT ctid FROM child LIMIT 5000))", "child",
          lock="ROW EXCLUSIVE", scan=True),
    Claim(None, "CREATE INDEX p_k ON ONLY p (k)", "p", lock=SHARE),
    Claim(None, "ALTER TABLE t SET ACCESS METHOD heap", "t", lock=AE),          # the live table's already
    Claim(None, "ALTER TABLE t SET TABLESPACE pg_default", "t", lock=AE),
]



async def _check(db: tuple[psycopg.AsyncConnection, str], claim: Claim) -> None:
    conn, schema = db
    catalog = await load_catalog(conn)
    for stmt in claim.prepare:
        await conn.execute(stmt)
    findings = await lint_claim(conn, claim, catalog, assume=True)
    if claim.rule is None:
        assert [f for f in findings if f.severity == "error"] == [], findings
        lock, rewrite, scan = claim.lock, claim.rewrite, claim.scan
    else:
        flagged = [f for f in findings if f.rule == claim.rule]
        assert flagged, f"{claim.rule} did not flag {claim.sql}: {findings}"
        lock, rewrite, scan = flagged[0].lock, flagged[0].effect == "rewrite", flagged[0].effect == "scan"
    seen = (await observe_outside_transaction(conn, schema, claim) if claim.outside_transaction
            else await observe_in_transaction(conn, claim))
    assert seen.locks.get(claim.table) == lock, (claim.sql, seen.locks)
    for other, mode in claim.others.items():
        assert seen.locks.get(other) == mode, (claim.sql, other, seen.locks)
    assert seen.rewrite == rewrite, (claim.sql, "rewrite" if seen.rewrite else "no rewrite")
    if seen.scans is not None and claim.rule not in ("truncate-cascade", "truncate"):  # TRUNCATE counts as one scan in the
        # statistics although it replaces the table's file instead of reading it
        if rewrite or scan:
            assert seen.scans >= 1, (claim.sql, "expected a scan")
        else:
            assert seen.scans == 0, (claim.sql, f"{seen.scans} unexpected scans")

    if claim.rule == "validate-in-same-transaction":
        return          # VALIDATE itself waits for nothing: the lock was taken by the add before it
    # missing-lock-timeout claims the same lock, on the table it names
    timeout = [f for f in await lint_claim(conn, claim, catalog, assume=False) if f.rule == "missing-lock-timeout"]
    blocking = lock is not None and (locks.blocks_reads(lock) or locks.blocks_writes(lock))
    assert bool(timeout) == blocking, (claim.sql, timeout)
    if timeout:
        named = (timeout[0].table or claim.table).rsplit(".", 1)[-1]
        assert seen.locks.get(named) == timeout[0].lock, (claim.sql, timeout[0], seen.locks)


@pytest.mark.parametrize("claim", FLAGGED, ids=[f"{c.rule}:{c.sql}" for c in FLAGGED])
async def test_flagged_statement_does_what_the_finding_says(db: tuple[psycopg.AsyncConnection, str],
                                                          claim: Claim) -> None:
    await _check(db, claim)


@pytest.mark.parametrize("claim", SAFE, ids=[c.sql for c in SAFE])
async def test_safe_rewrite_keeps_its_promise(db: tuple[psycopg.AsyncConnection, str], claim: Claim) -> None:
    await _check(db, claim)


async def test_not_null_column_without_default_fails_on_a_table_with_rows(
        db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, _ = db
    sql = "ALTER TABLE t ADD COLUMN flag boolean NOT NULL"
    [finding] = [f for f in await lint_claim(conn, Claim(None, sql, "t"), await load_catalog(conn), True)
                 if f.rule == "add-column-not-null-no-default"]
    assert finding.breaks_old_release
    with pytest.raises(psycopg.errors.NotNullViolation):
        await conn.execute(sql)


async def test_concurrently_in_a_transaction_is_refused(db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, _ = db
    claim = Claim(None, "CREATE INDEX CONCURRENTLY t_note_idx ON t (note)", "t", before=("BEGIN",))
    script = parse_script("BEGIN;\nCREATE INDEX CONCURRENTLY t_note_idx ON t (note);\nCOMMIT;", "0001.sql")
    found = lint_scripts([script], await server_version(conn), assume_lock_timeout=True)
    assert [(f.rule, f.line) for f in found] == [("concurrently-in-transaction", 2)]
    await conn.execute("BEGIN")
    try:
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):
            await conn.execute(claim.sql)
    finally:
        await conn.execute("ROLLBACK")


async def test_load_catalog_reads_types_checks_rows_and_indexes(db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, schema = db
    catalog = await load_catalog(conn)
    t = catalog.tables[(schema, "t")]
    assert str(t.columns["name"].type) == "varchar(20)" and t.columns["id"].not_null
    assert str(t.columns["ts"].type) == "timestamp(3)" and str(t.columns["price"].type) == "numeric(10,2)"
    assert t.rows == 200 and [c.name for c in t.checks] == ["t_email_nn"]
    assert (t.access_method, t.tablespace) == ("heap", "pg_default") and t.bytes and t.bytes > 0
    assert t.column_indexes["name"] == ("t_name_idx",) and t.column_indexes["id"] == ("t_pkey",)
    assert t.index_defs["t_name_idx"].startswith("CREATE INDEX t_name_idx ON ")
    assert catalog.tables[(schema, "e")].bytes == 0
    assert catalog.tables[(schema, "p")].bytes is None and catalog.tables[(schema, "p1")].bytes
    assert catalog.indexes[(schema, "t_name_idx")] == (schema, "t")
    assert catalog.tables[(schema, "p")].partitioned
    assert catalog.search_path == (schema,)
    assert catalog.functions["random"] == "v" and catalog.functions["now"] == "s"


async def _probe(schema: str, sql: str) -> BaseException | None:
    """`sql` from another session that waits at most 200 ms for a lock: the error, or None."""
    probe = await connect(URL)
    try:
        await probe.execute(f"SET search_path = {schema}")
        await probe.execute("SET lock_timeout = '200ms'")
        await probe.execute(sql)
    except psycopg.Error as e:
        return e
    finally:
        await probe.close()
    return None


async def test_a_whole_table_update_blocks_the_running_releases_writes_to_any_row(
        db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, schema = db
    found = await lint_claim(conn, Claim(None, "UPDATE t SET note = 'x'", "t"), await load_catalog(conn), True)
    assert [f.rule for f in found] == ["whole-table-write"]
    await conn.execute("BEGIN")
    try:
        await conn.execute("UPDATE t SET note = 'x'")
        assert isinstance(await _probe(schema, "UPDATE t SET note = 'y' WHERE id = 200"),
                          psycopg.errors.LockNotAvailable)
        assert await _probe(schema, "SELECT count(*) FROM t") is None           # reads go on
    finally:
        await conn.execute("ROLLBACK")
    assert await _probe(schema, "UPDATE t SET note = 'y' WHERE id = 200") is None


async def test_lock_table_holds_until_the_transaction_ends(db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, schema = db
    await conn.execute("BEGIN")
    try:
        await conn.execute("LOCK TABLE t IN SHARE MODE")
        await conn.execute("SELECT count(*) FROM o")                           # later statements of the file
        assert isinstance(await _probe(schema, "INSERT INTO t (id, email) VALUES (1000, 'x')"),
                          psycopg.errors.LockNotAvailable)
    finally:
        await conn.execute("ROLLBACK")


async def test_dropping_a_not_null_columns_default_breaks_inserts_that_leave_it_out(
        db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, _ = db
    sql = "ALTER TABLE d ALTER COLUMN status DROP DEFAULT"
    [f] = [f for f in await lint_claim(conn, Claim(None, sql, "d"), await load_catalog(conn), True)
           if f.rule == "drop-default-not-null"]
    assert f.breaks_old_release and f.severity == "error"
    await conn.execute("BEGIN")
    try:
        await conn.execute("INSERT INTO d (id) VALUES (100)")                  # as the running release writes
        await conn.execute(sql)
        with pytest.raises(psycopg.errors.NotNullViolation):
            await conn.execute("INSERT INTO d (id) VALUES (101)")
    finally:
        await conn.execute("ROLLBACK")


async def test_a_new_enum_label_used_in_the_same_transaction_fails(db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, _ = db
    text = "ALTER TYPE mood ADD VALUE 'meh';\nSELECT 'meh'::mood;\n"
    found = lint_scripts([parse_script(text, "0001.sql")], await server_version(conn), assume_lock_timeout=True,
                         catalog=await load_catalog(conn))
    assert [(f.rule, f.line) for f in found] == [("enum-value-used-in-same-transaction", 2)]
    await conn.execute("BEGIN")
    try:
        await conn.execute("ALTER TYPE mood ADD VALUE 'meh'")
        with pytest.raises(psycopg.errors.UnsafeNewEnumValueUsage):
            await conn.execute("SELECT 'meh'::mood")
    finally:
        await conn.execute("ROLLBACK")


async def test_create_index_concurrently_on_a_partitioned_table_is_refused(
        db: tuple[psycopg.AsyncConnection, str]) -> None:
    conn, _ = db
    sql = "CREATE INDEX CONCURRENTLY p_k ON p (k)"
    script = parse_script(f"-- shipyard:no-transaction\n{sql};", "0001.sql")
    found = lint_scripts([script], await server_version(conn), assume_lock_timeout=True,
                         catalog=await load_catalog(conn))
    [f] = [f for f in found if f.rule == "concurrent-index-on-partitioned"]
    assert f.severity == "error" and "ON ONLY p" in f.fix
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        await conn.execute(sql)
    await conn.execute(f.fix.split("\n")[1])                                   # the fix's first step works
    assert await scalar(conn, "SELECT count(*) FROM pg_class WHERE relname = 'p_k'") == 1


# -- the DDL table's own claims: every row with an example, run on this PostgreSQL ---------------------

ROWS = [(getattr(k, "name", None) or k.__name__, e, x) for k, e in [*STATEMENTS.items(), *ALTER_TABLE.items()]
        for x in e.examples]


@pytest.mark.parametrize(("name", "entry", "example"), ROWS, ids=[f"{n}:{x.sql}" for n, _, x in ROWS])
async def test_the_ddl_table_row_holds_on_postgresql(db: tuple[psycopg.AsyncConnection, str], name: str,
                                                     entry: Entry, example: Example) -> None:
    """The lock pg_locks shows is the row's (or its variant's) lock for this server's major, the
    table's file is replaced exactly when the example's effect is rewrite, and the table is read
    exactly when it is rewrite or scan."""
    conn, schema = db
    major = major_of(await server_version(conn))
    if entry.since > major:
        pytest.skip(f"{entry.form} needs PostgreSQL >= {entry.since}, this server is {major}")
    for stmt in example.prepare:
        await conn.execute(stmt)
    claim = Claim(None, example.sql, example.table, outside_transaction=example.outside_transaction,
                  others=dict(example.others), before=example.before)
    seen = (await observe_outside_transaction(conn, schema, claim) if example.outside_transaction
            else await observe_in_transaction(conn, claim))
    assert seen.locks.get(example.table) == entry.lock_for(major, example.variant), (name, seen.locks)
    for other, mode in example.others:
        assert seen.locks.get(other) == mode, (name, other, seen.locks)
    effect = entry.effect_of(example)
    assert seen.rewrite == (effect == "rewrite"), (name, seen)
    if seen.scans is not None and name != "TruncateStmt":     # TRUNCATE counts one scan, see _check
        assert (seen.scans >= 1) == (effect in ("rewrite", "scan")), (name, seen.scans)


# -- type changes: the table's file and its index's file, as the finding says ----------------------------

@dataclass(frozen=True)
class TypeChange:
    sql: str
    index: str
    effect: str | None
    """The finding's effect (None: no alter-column-type error)."""
    table_rewritten: bool
    index_rebuilt: bool
    before: tuple[str, ...] = ()
    prepare: tuple[str, ...] = ()


TS_INDEX = ("CREATE INDEX t_ts_idx ON t (ts)",)
TYPE_CHANGES = [
    TypeChange("ALTER TABLE t ALTER COLUMN name TYPE text", "t_name_idx", None, False, False),
    TypeChange("ALTER TABLE t ALTER COLUMN name TYPE text USING name::text", "t_name_idx", None, False, False),
    TypeChange("ALTER TABLE t ALTER COLUMN name TYPE text USING CAST(name AS text)", "t_name_idx", None, False, False),
    TypeChange("ALTER TABLE t ALTER COLUMN name TYPE varchar(40) USING name::varchar(40)", "t_name_idx", None, False,
               False),
    TypeChange("ALTER TABLE t ALTER COLUMN name TYPE text USING lower(name)", "t_name_idx", "rewrite", True, True),
    TypeChange("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", "t_ts_idx", "scan", False, True,
               before=("SET LOCAL TimeZone = 'UTC'",), prepare=TS_INDEX),
    TypeChange("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz USING ts::timestamptz", "t_ts_idx", "scan", False, True,
               before=("SET LOCAL TimeZone = 'Etc/UTC'",), prepare=TS_INDEX),
    TypeChange("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", "t_ts_idx", "rewrite", True, True,
               before=("SET LOCAL TimeZone = 'Europe/Berlin'",), prepare=TS_INDEX),
    TypeChange("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", "t_ts_key", "scan", False, True,
               before=("SET LOCAL TimeZone = 'UTC'",),
               prepare=("UPDATE t SET ts = ts + id * interval '1 second'", "ALTER TABLE t ADD UNIQUE (ts)")),
    TypeChange("ALTER TABLE t ALTER COLUMN id TYPE bigint", "t_pkey", "rewrite", True, True),
]


async def _files_in_transaction(conn: psycopg.AsyncConnection, change: TypeChange) -> tuple[bool, bool]:
    """(table file replaced, index file replaced). By name: an index PostgreSQL keeps gets a new
    oid over the same relfilenode, a rebuilt one a new relfilenode."""
    node = "SELECT relfilenode FROM pg_class WHERE oid = to_regclass(%s)"
    table, index = "t", change.index
    await conn.execute("BEGIN")
    try:
        for stmt in change.before:
            await conn.execute(stmt)
        before = (await scalar(conn, node, table), await scalar(conn, node, index))
        await conn.execute(change.sql)
        after = (await scalar(conn, node, table), await scalar(conn, node, index))
    finally:
        await conn.execute("ROLLBACK")
    return before[0] != after[0], before[1] != after[1]


@pytest.mark.parametrize("change", TYPE_CHANGES, ids=[" ".join((*c.before, c.sql)) for c in TYPE_CHANGES])
async def test_a_type_change_rewrites_and_rebuilds_what_the_finding_says(db: tuple[psycopg.AsyncConnection, str],
                                                                          change: TypeChange) -> None:
    conn, _ = db
    for stmt in change.prepare:
        await conn.execute(stmt)
    claim = Claim(None, change.sql, "t", before=change.before)
    found = [f for f in await lint_claim(conn, claim, await load_catalog(conn), True) if f.rule == "alter-column-type"]
    assert [f.effect for f in found if f.severity == "error"] == ([change.effect] if change.effect else []), found
    if change.effect == "scan":                 # a constraint's index cannot be dropped first
        assert change.index in found[0].message
        assert ("backs a constraint" if change.index.endswith("_key") else "CREATE INDEX CONCURRENTLY") in found[0].fix
    assert await _files_in_transaction(conn, change) == (change.table_rewritten, change.index_rebuilt)


async def test_a_type_change_on_an_empty_table_is_cheap(db: tuple[psycopg.AsyncConnection, str]) -> None:
    """Judged cheap from the live catalog (its file is empty), and it is: PostgreSQL writes a new
    file of no row. Rows inserted by an earlier statement of the scripts make it a rewrite again."""
    conn, schema = db
    sql = "ALTER TABLE e ALTER COLUMN id TYPE bigint"
    catalog = await load_catalog(conn)
    assert catalog.tables[(schema, "e")].bytes == 0
    assert catalog.tables[(schema, "p")].bytes is None and catalog.tables[(schema, "p1")].bytes
    assert [f for f in await lint_claim(conn, Claim(None, sql, "e"), catalog, True) if f.severity == "error"] == []
    filled = await lint_claim(conn, Claim(None, sql, "e", before=("INSERT INTO e SELECT generate_series(1, 10)",)),
                         catalog, True)
    assert [f.rule for f in filled if f.severity == "error"] == ["alter-column-type"]
    parent = "ALTER TABLE p ALTER COLUMN id TYPE bigint"          # p stores nothing, its partition p1 does
    assert [f.rule for f in await lint_claim(conn, Claim(None, parent, "p"), catalog, True)
            if f.severity == "error"] == ["alter-column-type"]
    await conn.execute("BEGIN")
    try:
        await conn.execute(sql)
        assert await scalar(conn, "SELECT pg_relation_size('e')") == 0
        p1_file = await scalar(conn, "SELECT relfilenode FROM pg_class WHERE oid = 'p1'::regclass")
        await conn.execute(parent)
        assert await scalar(conn, "SELECT relfilenode FROM pg_class WHERE oid = 'p1'::regclass") != p1_file
        assert await scalar(conn, "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND granted "
                                "AND relation = 'e'::regclass AND mode = 'AccessExclusiveLock'") == 1
    finally:
        await conn.execute("ROLLBACK")


async def test_a_form_newer_than_this_server_is_flagged_and_refused(db: tuple[psycopg.AsyncConnection, str]) -> None:
    """The table's version of each form, against this server: every row (or variant) newer than
    it is flagged by needs-newer-postgresql and refused by PostgreSQL; the others are not flagged."""
    conn, _ = db
    major = major_of(await server_version(conn))
    forms = {17: "ALTER TABLE t ALTER COLUMN note SET EXPRESSION AS ('x')",
             15: "MERGE INTO e USING o ON e.id = o.id WHEN MATCHED THEN DELETE",
             14: "ALTER TABLE t ALTER COLUMN note SET COMPRESSION pglz"}
    catalog = await load_catalog(conn)
    for need, sql in forms.items():
        flagged = [f for f in await lint_claim(conn, Claim(None, sql, "t"), catalog, True)
                   if f.rule == "needs-newer-postgresql"]
        assert bool(flagged) == (major < need), (sql, flagged)
        if major < need:
            await conn.execute("BEGIN")
            try:
                with pytest.raises(psycopg.errors.SyntaxError):
                    await conn.execute(sql)
            finally:
                await conn.execute("ROLLBACK")
