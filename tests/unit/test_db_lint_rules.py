"""Every lint rule fires where PostgreSQL would lock, rewrite, scan or break the old release,
and stays quiet for the safe way of writing the same change."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.database import locks
from shipyard.database.findings import Finding
from shipyard.database.lint import RULES, Catalog, CheckConstraint, Column, ColumnType, Table, lint_scripts
from shipyard.database.statements import parse_script

T_COLUMNS = {
    "id": Column("id", ColumnType("int4"), True),
    "name": Column("name", ColumnType("varchar", (20,))),
    "note": Column("note", ColumnType("text")),
    "price": Column("price", ColumnType("numeric", (10, 2))),
    "ts": Column("ts", ColumnType("timestamp", (3,))),
    "addr": Column("addr", ColumnType("cidr")),
    "code": Column("code", ColumnType("bpchar", (5,))),
    "email": Column("email", ColumnType("text")),
}
CATALOG = Catalog.of(
    [Table("public", "t", T_COLUMNS, rows=1200, checks=(CheckConstraint("t_email_nn", "(email IS NOT NULL)"),
                                                         CheckConstraint("t_note_nn", "(note IS NOT NULL)", False))),
     Table("public", "o", {"id": Column("id", ColumnType("int4"), True)}, rows=10),
     Table("public", "p", {}, partitioned=True)],
    indexes={("public", "t_name_idx"): ("public", "t")},
    functions={"my_stable": "s", "my_volatile": "v"},
)


def lint(*files: str, pg: int = 15, catalog: Catalog | None = None, timeout: bool = True) -> list[Finding]:
    scripts = [parse_script(text, f"{i:04d}.sql") for i, text in enumerate(files, 1)]
    return lint_scripts(scripts, pg, assume_lock_timeout=timeout, catalog=catalog)


def rules(*files: str, **kw: object) -> list[str]:
    return [f.rule for f in lint(*files, **kw)]  # type: ignore[arg-type]


def only(rule: str, *files: str, **kw: object) -> Finding:
    found = [f for f in lint(*files, **kw) if f.rule == rule]  # type: ignore[arg-type]
    assert len(found) == 1, found
    return found[0]


# -- one firing and one quiet case per rule -----------------------------------------------------------

CASES = [
    ("add-column-volatile-default", "ALTER TABLE t ADD COLUMN r float DEFAULT random()",
     "ALTER TABLE t ADD COLUMN r timestamptz DEFAULT now()"),
    ("add-column-default-rewrite", "ALTER TABLE t ADD COLUMN n int DEFAULT 0",
     "ALTER TABLE t ADD COLUMN n int DEFAULT NULL"),
    ("add-column-stored-generated", "ALTER TABLE t ADD COLUMN twice int GENERATED ALWAYS AS (id * 2) STORED",
     "ALTER TABLE t ADD COLUMN twice int"),
    ("add-column-identity", "ALTER TABLE t ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY",
     "ALTER TABLE t ADD COLUMN seq bigint"),
    ("add-column-not-null-no-default", "ALTER TABLE t ADD COLUMN flag boolean NOT NULL",
     "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false"),
    ("alter-column-type", "ALTER TABLE t ALTER COLUMN name TYPE bigint USING length(name)",
     "ALTER TABLE t ALTER COLUMN name TYPE text"),
    ("create-index-non-concurrent", "CREATE INDEX t_note_idx ON t (note)",
     "CREATE INDEX CONCURRENTLY t_note_idx ON t (note)"),
    ("drop-index-non-concurrent", "DROP INDEX t_name_idx", "DROP INDEX CONCURRENTLY t_name_idx"),
    ("concurrently-in-transaction", "BEGIN; CREATE INDEX CONCURRENTLY t_note_idx ON t (note); COMMIT",
     "CREATE INDEX CONCURRENTLY t_note_idx ON t (note)"),
    ("add-foreign-key-validating", "ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (id) REFERENCES o (id)",
     "ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (id) REFERENCES o (id) NOT VALID"),
    ("add-check-validating", "ALTER TABLE t ADD CONSTRAINT pos CHECK (price > 0)",
     "ALTER TABLE t ADD CONSTRAINT pos CHECK (price > 0) NOT VALID"),
    ("validate-in-same-transaction",
     "ALTER TABLE t ADD CONSTRAINT pos CHECK (price > 0) NOT VALID; ALTER TABLE t VALIDATE CONSTRAINT pos",
     "ALTER TABLE t VALIDATE CONSTRAINT pos"),
    ("set-not-null", "ALTER TABLE t ALTER COLUMN note SET NOT NULL", "ALTER TABLE t ALTER COLUMN email SET NOT NULL"),
    ("add-unique-without-index", "ALTER TABLE t ADD CONSTRAINT t_name_key UNIQUE (name)",
     "ALTER TABLE t ADD CONSTRAINT t_name_key UNIQUE USING INDEX t_name_idx"),
    ("rename-column", "ALTER TABLE t RENAME COLUMN note TO remark", "ALTER TABLE t RENAME CONSTRAINT a TO b"),
    ("rename-table", "ALTER TABLE t RENAME TO things", "ALTER INDEX t_name_idx RENAME TO t_name_ix"),
    ("drop-column", "ALTER TABLE t DROP COLUMN note", "ALTER TABLE t DROP CONSTRAINT t_email_nn"),
    ("drop-table", "DROP TABLE t", "DROP VIEW t_view"),
    ("missing-lock-timeout", "ALTER TABLE t ADD COLUMN n int",
     "SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN n int"),
    ("reindex-non-concurrent", "REINDEX TABLE t", "REINDEX TABLE CONCURRENTLY t"),
    ("vacuum-full", "VACUUM FULL t", "VACUUM (ANALYZE) t"),
    ("cluster", "CLUSTER t USING t_name_idx", "ANALYZE t"),
    ("detach-partition-non-concurrent", "ALTER TABLE p DETACH PARTITION p1",
     "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY"),
    ("truncate-cascade", "TRUNCATE o CASCADE", "TRUNCATE o"),
    ("truncate", "TRUNCATE t", "CREATE TABLE new_t (id int); TRUNCATE new_t"),
    ("whole-table-write", "UPDATE t SET note = 'x'", "UPDATE t SET note = 'x' WHERE id < 100"),
    ("lock-table", "LOCK TABLE t IN SHARE MODE", "LOCK TABLE t IN ACCESS SHARE MODE"),
    ("set-logged", "ALTER TABLE t SET UNLOGGED", "ALTER TABLE t SET (fillfactor = 90)"),
    ("concurrent-index-on-partitioned", "CREATE INDEX CONCURRENTLY p_k ON p (k)",
     "CREATE INDEX p_k ON ONLY p (k)"),
    ("drop-default-not-null", "ALTER TABLE t ALTER COLUMN id DROP DEFAULT",
     "ALTER TABLE t ALTER COLUMN note DROP DEFAULT"),
    ("enum-value-used-in-same-transaction", "ALTER TYPE mood ADD VALUE 'meh'; INSERT INTO t (note) VALUES ('meh')",
     "-- shipyard:no-transaction\nALTER TYPE mood ADD VALUE 'meh'; INSERT INTO t (note) VALUES ('meh')"),
    ("unknown-statement", "DO $$ BEGIN PERFORM 1; END $$", "SELECT 1"),
    ("needs-newer-postgresql", "ALTER TABLE t ALTER COLUMN note SET COMPRESSION lz4",
     "ALTER TABLE t ALTER COLUMN note SET STORAGE EXTERNAL"),
    ("table-rewrite", "ALTER TABLE t SET TABLESPACE fast", "CREATE TABLE new_t (id int); ALTER TABLE new_t SET TABLESPACE fast"),
    ("unknown-ignore", "-- shipyard:ignore no-such-rule because\nSELECT 1",
     "-- shipyard:ignore set-not-null checked by hand\nSELECT 1"),
]
VERSION_OF = {"add-column-default-rewrite": 10, "needs-newer-postgresql": 13}


def test_every_rule_has_a_case_and_a_doc_section() -> None:
    assert sorted(rule for rule, _, _ in CASES) == sorted(RULES)
    doc = (Path(__file__).parents[2] / "docs" / "database-rules.md").read_text()
    assert [rule for rule in RULES if f"### {rule}\n" not in doc] == []


@pytest.mark.parametrize(("rule", "firing", "quiet"), CASES, ids=[c[0] for c in CASES])
def test_rule_fires_and_stays_quiet(rule: str, firing: str, quiet: str) -> None:
    pg = VERSION_OF.get(rule, 15)
    timeout = rule != "missing-lock-timeout"
    fired = only(rule, firing, pg=pg, catalog=CATALOG, timeout=timeout)
    assert fired.source == "0001.sql" and fired.message and fired.fix
    info = RULES[rule]
    assert fired.breaks_old_release == info.breaks_old_release
    if info.lock not in (None, "varies"):
        assert fired.lock in locks.MODES
    assert rule not in rules(quiet, pg=pg, catalog=CATALOG, timeout=timeout)


# -- ADD COLUMN --------------------------------------------------------------------------------------

@pytest.mark.parametrize("default", ["gen_random_uuid()", "clock_timestamp()", "nextval('s')", "uuid_generate_v4()",
                                     "(random() * 100)::int", "my_volatile()"])
def test_volatile_defaults_rewrite(default: str) -> None:
    f = only("add-column-volatile-default", f"ALTER TABLE t ADD COLUMN v text DEFAULT {default}", catalog=CATALOG)
    assert (f.severity, f.lock, f.effect, f.table) == ("error", "ACCESS EXCLUSIVE", "rewrite", "t")
    assert "ALTER TABLE t ADD COLUMN v text;" in f.fix and "SET DEFAULT" in f.fix


@pytest.mark.parametrize("default", ["now()", "current_timestamp", "'x'", "lower('A')", "0", "my_stable()",
                                     "'{}'::jsonb"])
def test_non_volatile_defaults_are_free_since_pg11(default: str) -> None:
    assert lint(f"ALTER TABLE t ADD COLUMN v text DEFAULT {default}", catalog=CATALOG) == []


def test_unknown_function_default_is_a_warning_unless_the_catalog_knows_it() -> None:
    f = only("add-column-volatile-default", "ALTER TABLE t ADD COLUMN v text DEFAULT make_code()")
    assert f.severity == "warning" and "make_code" in f.message
    script_says = ("CREATE FUNCTION make_code() RETURNS text LANGUAGE sql IMMUTABLE AS 'select 1';"
                   "ALTER TABLE t ADD COLUMN v text DEFAULT make_code()")
    assert rules(script_says) == []


def test_constant_default_rewrites_before_pg11_only() -> None:
    f = only("add-column-default-rewrite", "ALTER TABLE t ADD COLUMN n int DEFAULT 0", pg=100023)
    assert f.effect == "rewrite" and "PostgreSQL 10" in f.message
    assert rules("ALTER TABLE t ADD COLUMN n int DEFAULT 0", pg=110000) == []
    assert rules("ALTER TABLE t ADD COLUMN r float DEFAULT random()", pg=10) == ["add-column-volatile-default"]


def test_serial_types_are_identity_columns() -> None:
    for typ in ("serial", "bigserial", "smallserial"):
        f = only("add-column-identity", f"ALTER TABLE t ADD COLUMN n {typ}")
        assert f.effect == "rewrite" and "CREATE SEQUENCE t_n_seq" in f.fix


def test_virtual_generated_column_offered_on_pg18() -> None:
    sql = "ALTER TABLE t ADD COLUMN twice int GENERATED ALWAYS AS (id * 2) STORED"
    assert "VIRTUAL" in only("add-column-stored-generated", sql, pg=18).fix
    assert "VIRTUAL" not in only("add-column-stored-generated", sql, pg=17).fix


def test_not_null_without_default_breaks_the_old_release() -> None:
    f = only("add-column-not-null-no-default", "ALTER TABLE t ADD COLUMN flag boolean NOT NULL", catalog=CATALOG)
    assert f.breaks_old_release and "1,200 rows" not in f.message and "DEFAULT" in f.fix
    assert rules("ALTER TABLE t ADD COLUMN n bigint NOT NULL GENERATED ALWAYS AS IDENTITY") == ["add-column-identity"]


def test_columns_of_tables_created_by_the_scripts_are_free() -> None:
    create = "CREATE TABLE fresh (id int)"
    changes = ["ALTER TABLE fresh ADD COLUMN r float DEFAULT random()", "ALTER TABLE fresh ADD COLUMN f int NOT NULL",
               "ALTER TABLE fresh ALTER COLUMN id TYPE bigint", "CREATE INDEX fresh_id ON fresh (id)",
               "ALTER TABLE fresh ALTER COLUMN id SET NOT NULL", "ALTER TABLE fresh ADD CHECK (id > 0)",
               "ALTER TABLE fresh RENAME COLUMN id TO ident", "DROP TABLE fresh"]
    assert lint(create, *changes, timeout=False) == []


# -- ALTER COLUMN TYPE ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("column", "new"), [
    ("name", "varchar(40)"), ("name", "varchar"), ("name", "text"), ("note", "varchar"), ("price", "numeric(12,2)"),
    ("price", "numeric"), ("addr", "inet"), ("ts", "timestamp(6)"), ("ts", "timestamp"), ("name", "varchar(20)"),
])
def test_binary_coercible_type_changes_are_quiet(column: str, new: str) -> None:
    assert rules(f"ALTER TABLE t ALTER COLUMN {column} TYPE {new}", catalog=CATALOG) == []


@pytest.mark.parametrize(("column", "new"), [
    ("name", "varchar(10)"), ("note", "varchar(100)"), ("price", "numeric(12,3)"), ("price", "numeric(8,2)"),
    ("code", "char(10)"), ("id", "bigint"), ("ts", "timestamptz"), ("ts", "timestamp(0)"), ("addr", "text"),
])
def test_rewriting_type_changes_fire(column: str, new: str) -> None:
    f = only("alter-column-type", f"ALTER TABLE t ALTER COLUMN {column} TYPE {new}", catalog=CATALOG)
    assert (f.severity, f.lock, f.effect, f.breaks_old_release) == ("error", "ACCESS EXCLUSIVE", "rewrite", False)
    assert f"t.{column}" in f.message


def test_type_change_knows_the_type_an_earlier_script_declared() -> None:
    add = "ALTER TABLE t ADD COLUMN label varchar(10)"                     # no catalog: t exists, label is new
    assert rules(add, "ALTER TABLE t ALTER COLUMN label TYPE varchar(50)") == []
    assert rules(add, "ALTER TABLE t ALTER COLUMN label TYPE varchar(5)") == ["alter-column-type"]
    catalog = Catalog.of([Table("public", "u", {"label": Column("label", ColumnType.parse("character varying(10)"))})])
    assert rules("ALTER TABLE u ALTER COLUMN label TYPE varchar(50)", catalog=catalog) == []
    found = lint("ALTER TABLE u ALTER COLUMN label TYPE bigint USING 0", "ALTER TABLE u ALTER COLUMN label TYPE text",
                 catalog=catalog)
    assert [f.rule for f in found] == ["alter-column-type", "alter-column-type"]
    assert "from bigint to text" in found[1].message


def test_unknown_old_type() -> None:
    f = only("alter-column-type", "ALTER TABLE t ALTER COLUMN x TYPE bigint")
    assert f.severity == "error" and "unknown" in f.message
    w = only("alter-column-type", "ALTER TABLE t ALTER COLUMN x TYPE text")
    assert w.severity == "warning" and "varchar or text" in w.message


def test_timestamptz_change_is_free_on_pg12_in_utc() -> None:
    sql = "ALTER TABLE t ALTER COLUMN ts TYPE timestamptz"
    assert "SET LOCAL TimeZone" in only("alter-column-type", sql, catalog=CATALOG).fix
    assert rules("SET LOCAL TimeZone = 'UTC'; " + sql, catalog=CATALOG) == []
    assert rules("SET TIME ZONE 'UTC'; " + sql, catalog=CATALOG, pg=11) == ["alter-column-type"]
    assert rules("SET TIME ZONE 'Europe/Berlin'; " + sql, catalog=CATALOG) == ["alter-column-type"]
    rounded = "SET LOCAL TimeZone = 'UTC'; ALTER TABLE t ALTER COLUMN ts TYPE timestamptz(3)"
    assert rules(rounded, catalog=CATALOG) == ["alter-column-type"]


def test_shrinking_varchar_suggests_a_check_constraint() -> None:
    f = only("alter-column-type", "ALTER TABLE t ALTER COLUMN name TYPE varchar(10)", catalog=CATALOG)
    assert "CHECK (char_length(name) <= 10) NOT VALID" in f.fix


def test_using_the_column_itself_is_still_binary_coercible() -> None:
    assert rules("ALTER TABLE t ALTER COLUMN name TYPE varchar(30) USING name", catalog=CATALOG) == []


# -- indexes -----------------------------------------------------------------------------------------

def test_create_index_fix_is_the_concurrent_statement() -> None:
    f = only("create-index-non-concurrent", "CREATE UNIQUE INDEX t_note_idx ON public.t (note)", catalog=CATALOG)
    assert (f.lock, f.effect, f.table) == ("SHARE", "scan", "public.t")
    assert "CREATE UNIQUE INDEX CONCURRENTLY t_note_idx ON public.t (note)" in f.fix and "1,200 rows" in f.message


def test_create_index_on_partitioned_table_suggests_on_only() -> None:
    f = only("create-index-non-concurrent", "CREATE INDEX p_k ON p (k)", catalog=CATALOG)
    assert "ON ONLY p" in f.fix and "ATTACH PARTITION" in f.fix
    assert rules("CREATE INDEX p_k ON ONLY p (k)", catalog=CATALOG) == []


def test_drop_index_knows_its_table_from_catalog_or_scripts() -> None:
    assert only("drop-index-non-concurrent", "DROP INDEX t_name_idx", catalog=CATALOG).table == "public.t"
    assert only("drop-index-non-concurrent", "CREATE INDEX CONCURRENTLY ix ON o (id)", "DROP INDEX ix").table \
        == "public.o"
    assert rules("CREATE TABLE n (id int); CREATE INDEX n_id ON n (id); DROP INDEX n_id") == []


def test_concurrently_in_transaction_covers_file_and_block() -> None:
    f = only("concurrently-in-transaction", "BEGIN;\nDROP INDEX CONCURRENTLY t_name_idx;\nCOMMIT;")
    assert f.line == 2 and "CONCURRENTLY" in f.message
    assert "concurrently-in-transaction" not in rules("-- shipyard:no-transaction\nREINDEX TABLE CONCURRENTLY t")


def test_unique_constraint_with_add_column_and_primary_key() -> None:
    f = only("add-unique-without-index", "ALTER TABLE t ADD COLUMN sku text UNIQUE")
    assert f.lock == "ACCESS EXCLUSIVE" and "CREATE UNIQUE INDEX CONCURRENTLY" in f.fix
    pk = only("add-unique-without-index", "ALTER TABLE o ADD PRIMARY KEY (id)")
    assert "PRIMARY KEY USING INDEX o_pkey" in pk.fix and "NOT NULL first" in pk.fix


# -- constraints -------------------------------------------------------------------------------------

def test_foreign_key_locks_both_tables() -> None:
    f = only("add-foreign-key-validating", "ALTER TABLE t ADD FOREIGN KEY (id) REFERENCES o (id)")
    assert (f.lock, f.effect) == ("SHARE ROW EXCLUSIVE", "scan")
    assert "t_id_fkey FOREIGN KEY (id) REFERENCES o (id) NOT VALID" in f.fix and "VALIDATE CONSTRAINT t_id_fkey" in f.fix


def test_add_column_references_scans_only_with_a_default() -> None:
    assert "add-foreign-key-validating" not in rules("ALTER TABLE t ADD COLUMN o_id int REFERENCES o (id)")
    f = only("add-foreign-key-validating", "ALTER TABLE t ADD COLUMN o_id int DEFAULT 1 REFERENCES o (id)")
    assert f.lock == "ACCESS EXCLUSIVE" and f.effect == "scan"


def test_validate_in_a_later_transaction_is_quiet() -> None:
    add = "ALTER TABLE t ADD CONSTRAINT pos CHECK (price > 0) NOT VALID"
    validate = "ALTER TABLE t VALIDATE CONSTRAINT pos"
    assert rules(add, validate) == []                                       # two files, two transactions
    assert rules(f"-- shipyard:no-transaction\n{add};\n{validate};") == []  # autocommit, one by one
    f = only("validate-in-same-transaction", f"-- shipyard:no-transaction\nBEGIN;\n{add};\n{validate};\nCOMMIT;")
    assert f.lock == "ACCESS EXCLUSIVE" and f.line == 4
    fk = only("validate-in-same-transaction", "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES o (id) "
              "NOT VALID; ALTER TABLE t VALIDATE CONSTRAINT fk")
    assert fk.lock == "SHARE ROW EXCLUSIVE"


def test_set_not_null_after_a_validated_check_in_an_earlier_file() -> None:
    add = "ALTER TABLE t ADD CONSTRAINT nn CHECK (x IS NOT NULL) NOT VALID"
    validate = "ALTER TABLE t VALIDATE CONSTRAINT nn"
    set_nn = "ALTER TABLE t ALTER COLUMN x SET NOT NULL"
    assert rules(add, validate, set_nn) == []
    assert rules(add, set_nn) == ["set-not-null"]                   # NOT VALID proves nothing yet
    assert rules(add, validate, set_nn, pg=11) == ["set-not-null"]  # PostgreSQL < 12 scans anyway
    assert "keep a validated CHECK" in only("set-not-null", set_nn, pg=11).fix


def test_set_not_null_uses_catalog_checks_and_nullability() -> None:
    assert rules("ALTER TABLE t ALTER COLUMN email SET NOT NULL", catalog=CATALOG) == []
    assert rules("ALTER TABLE t ALTER COLUMN id SET NOT NULL", catalog=CATALOG) == []        # already NOT NULL
    assert rules("ALTER TABLE t ALTER COLUMN note SET NOT NULL", catalog=CATALOG) == ["set-not-null"]
    assert rules("ALTER TABLE t VALIDATE CONSTRAINT t_note_nn", "ALTER TABLE t ALTER COLUMN note SET NOT NULL",
                 catalog=CATALOG) == []
    f = only("set-not-null", "ALTER TABLE t ALTER COLUMN note SET NOT NULL", catalog=CATALOG, pg=18)
    assert "CHECK (note IS NOT NULL) NOT VALID" in f.fix and "NOT NULL note NOT VALID" in f.fix


def test_check_with_and_proves_not_null() -> None:
    add = "ALTER TABLE t ADD CONSTRAINT c CHECK (x IS NOT NULL AND x > 0) NOT VALID"
    assert rules(add, "ALTER TABLE t VALIDATE CONSTRAINT c", "ALTER TABLE t ALTER x SET NOT NULL") == []
    ored = "ALTER TABLE t ADD CONSTRAINT c CHECK (x IS NOT NULL OR y IS NOT NULL) NOT VALID"
    assert rules(ored, "ALTER TABLE t VALIDATE CONSTRAINT c", "ALTER TABLE t ALTER x SET NOT NULL") == ["set-not-null"]


# -- breaking the old release --------------------------------------------------------------------------

def test_contract_migrations_downgrade_breaking_changes_to_warnings() -> None:
    f = only("drop-column", "-- shipyard:contract\nALTER TABLE t DROP COLUMN note")
    assert f.severity == "warning" and f.breaks_old_release
    assert only("drop-column", "ALTER TABLE t DROP COLUMN note").severity == "error"


def test_rename_table_suggests_a_view_and_drop_table_lists_each_table() -> None:
    f = only("rename-table", "ALTER TABLE shop.t RENAME TO things")
    assert f.table == "shop.t" and "CREATE VIEW shop.t AS SELECT * FROM shop.things" in f.fix
    drops = [f.table for f in lint("DROP TABLE a, s.b") if f.rule == "drop-table"]
    assert drops == ["a", "s.b"]


def test_truncate_cascade_names_the_tables() -> None:
    f = only("truncate-cascade", "TRUNCATE o, t CASCADE")
    assert f.lock == "ACCESS EXCLUSIVE" and "o, t" in f.message


# -- maintenance -------------------------------------------------------------------------------------

def test_reindex_versions() -> None:
    f = only("reindex-non-concurrent", "REINDEX INDEX t_name_idx", catalog=CATALOG)
    assert (f.severity, f.lock, f.table) == ("error", "SHARE", "public.t") and "CONCURRENTLY" in f.fix
    old = only("reindex-non-concurrent", "REINDEX TABLE t", pg=11)
    assert old.severity == "warning" and "pg_repack" in old.fix


def test_vacuum_full_and_cluster_rewrite() -> None:
    assert only("vacuum-full", "VACUUM (FULL, ANALYZE) t").effect == "rewrite"
    assert only("vacuum-full", "VACUUM FULL").table is None
    assert rules("VACUUM (FULL false) t") == []
    assert only("cluster", "CLUSTER t").effect == "rewrite"


def test_detach_partition_before_pg14_is_a_warning() -> None:
    assert only("detach-partition-non-concurrent", "ALTER TABLE p DETACH PARTITION p1", pg=13).severity == "warning"


# -- lock_timeout ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN n int",
    "SET LOCAL lock_timeout TO 1000; ALTER TABLE t ADD COLUMN n int",
    "SELECT set_config('lock_timeout', '3s', false); ALTER TABLE t ADD COLUMN n int",
    "CREATE INDEX CONCURRENTLY ix ON t (note)",
    "CREATE TABLE n (id int)",
    "VACUUM t",
])
def test_lock_timeout_present_or_not_needed(sql: str) -> None:
    assert "missing-lock-timeout" not in rules(sql, timeout=False)


@pytest.mark.parametrize("sql", [
    "ALTER TABLE t ADD COLUMN n int",
    "SET lock_timeout = 0; ALTER TABLE t ADD COLUMN n int",
    "SET lock_timeout = '0ms'; ALTER TABLE t ADD COLUMN n int",
    "SET lock_timeout = '2s'; RESET lock_timeout; ALTER TABLE t ADD COLUMN n int",
    "SET lock_timeout = '2s'; SET LOCAL lock_timeout = 0; ALTER TABLE t ADD COLUMN n int",
    "-- shipyard:no-transaction\nSET LOCAL lock_timeout = '2s';\nALTER TABLE t ADD COLUMN n int;",
    "-- shipyard:no-transaction\nBEGIN; SET LOCAL lock_timeout = '2s'; COMMIT; ALTER TABLE t ADD COLUMN n int;",
    "CREATE TABLE child (id int REFERENCES t (id))",
    "CREATE TABLE p9 PARTITION OF p FOR VALUES FROM (1) TO (2)",
    "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
    "LOCK TABLE t IN SHARE MODE",
])
def test_lock_timeout_missing(sql: str) -> None:
    assert rules(sql, timeout=False)[-1] == "missing-lock-timeout"


def test_lock_timeout_is_per_script_and_reports_the_lock() -> None:
    found = lint("SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN a int", "CREATE INDEX ix ON t (note)",
                 timeout=False)
    miss = [f for f in found if f.rule == "missing-lock-timeout"]
    assert [(f.source, f.lock, f.table) for f in miss] == [("0002.sql", "SHARE", "t")]
    assert "SET LOCAL lock_timeout" in miss[0].fix          # the file runs as one transaction


def test_foreign_key_lock_names_the_referenced_table_when_it_is_the_only_existing_one() -> None:
    f = only("missing-lock-timeout", "CREATE TABLE child (id int REFERENCES o (id))", timeout=False)
    assert (f.lock, f.table) == ("SHARE ROW EXCLUSIVE", "o")


# -- ignores, order, versions, catalog loading shapes ---------------------------------------------------------

def test_ignored_findings_are_kept_with_their_reason() -> None:
    found = lint("-- shipyard:ignore create-index-non-concurrent table has 20 rows\nCREATE INDEX ix ON t (note);"
                 "\nCREATE INDEX iy ON t (name);")
    assert [(f.line, f.ignored, f.blocking) for f in found] == [(2, "table has 20 rows", False), (3, None, True)]
    bare = lint("-- shipyard:ignore vacuum-full\nVACUUM FULL t")
    assert bare[0].ignored == "no reason given"


def test_findings_follow_the_apply_order() -> None:
    found = lint("CREATE INDEX a ON t (x);\nDROP INDEX b;", "ALTER TABLE t DROP COLUMN c", timeout=False)
    assert [(f.source, f.line, f.rule) for f in found] == [
        ("0001.sql", 1, "create-index-non-concurrent"), ("0001.sql", 1, "missing-lock-timeout"),
        ("0001.sql", 2, "drop-index-non-concurrent"),
        ("0002.sql", 1, "drop-column"), ("0002.sql", 1, "missing-lock-timeout")]
    # a missing lock_timeout is said once per file, counting the statements it also applies to
    assert "(and 1 later statement(s) of this file)" in found[1].message


def test_pg_version_accepts_version_num_and_major() -> None:
    sql = "ALTER TABLE t ADD COLUMN n int DEFAULT 0"
    assert rules(sql, pg=100021) == rules(sql, pg=10) == ["add-column-default-rewrite"]
    assert rules(sql, pg=150020) == rules(sql, pg=15) == []


def test_schema_qualified_tables_and_search_path() -> None:
    catalog = Catalog.of([Table("app", "t", {"name": Column("name", ColumnType.parse("varchar(5)"))})],
                         search_path=("app", "public"))
    assert rules("ALTER TABLE t ALTER COLUMN name TYPE varchar(9)", catalog=catalog) == []
    assert rules("ALTER TABLE app.t ALTER COLUMN name TYPE varchar(9)", catalog=catalog) == []
    assert only("alter-column-type", "ALTER TABLE app.t ALTER COLUMN name TYPE int", catalog=catalog).table == "app.t"


def test_types_parse_like_format_type_prints_them() -> None:
    assert ColumnType.parse("character varying(20)") == ColumnType("varchar", (20,))
    assert ColumnType.parse("timestamp(3) without time zone") == ColumnType("timestamp", (3,))
    assert ColumnType.parse("integer[]") == ColumnType("int4", (), True)
    assert ColumnType.parse("numeric(10,2)") == ColumnType("numeric", (10, 2))
    assert str(ColumnType.parse("character varying(20)")) == "varchar(20)"
    assert ColumnType.parse("not a type ((") is None


# -- locks ---------------------------------------------------------------------------------------------------

def test_lock_conflicts_follow_postgresql_table() -> None:
    assert locks.conflicts("ACCESS SHARE", "ACCESS EXCLUSIVE") and not locks.conflicts("ACCESS SHARE", "EXCLUSIVE")
    assert locks.conflicts("SHARE UPDATE EXCLUSIVE", "SHARE UPDATE EXCLUSIVE")
    assert not locks.conflicts("SHARE", "SHARE") and locks.conflicts("SHARE", "ROW EXCLUSIVE")
    for a in locks.MODES:
        for b in locks.MODES:
            assert locks.conflicts(a, b) == locks.conflicts(b, a)
    assert [m for m in locks.MODES if locks.blocks_reads(m)] == ["ACCESS EXCLUSIVE"]
    assert [m for m in locks.MODES if locks.blocks_writes(m)] == ["SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
                                                                  "ACCESS EXCLUSIVE"]


def test_lock_names_and_strongest() -> None:
    assert locks.from_pg_locks("AccessExclusiveLock") == "ACCESS EXCLUSIVE"
    assert locks.from_pg_locks("ShareUpdateExclusiveLock") == "SHARE UPDATE EXCLUSIVE"
    assert locks.from_pg_locks("RowShareLock") == "ROW SHARE"
    with pytest.raises(ValueError):
        locks.from_pg_locks("SIReadLock")
    assert locks.strongest(["ROW EXCLUSIVE", "SHARE", "ACCESS SHARE"]) == "SHARE"
    assert locks.strongest([]) is None
    with pytest.raises(ValueError):
        locks.conflicts("SHARED", "SHARE")


# -- statement kinds without a rule, and the rules for rows, locks and persistence -------------------------

@pytest.mark.parametrize("sql", ["DO $$ BEGIN PERFORM 1; END $$", "ALTER TABLE t OWNER TO someone",
                                 "ALTER TABLE t ENABLE ROW LEVEL SECURITY", "CREATE PUBLICATION pub FOR TABLE t",
                                 "ALTER TABLE t ALTER COLUMN id DROP IDENTITY",
                                 "MERGE INTO t USING o ON t.id = o.id WHEN MATCHED THEN UPDATE SET note = 'x'",
                                 "ALTER TABLE t SET SCHEMA archive", "ALTER VIEW v ALTER COLUMN c SET DEFAULT 1"])
def test_a_statement_no_rule_models_is_unknown_not_clean(sql: str) -> None:
    f = only("unknown-statement", sql, catalog=CATALOG)
    assert f.severity == "warning" and f.message.startswith("unknown: not judged")
    assert "-- shipyard:ignore unknown-statement" in f.fix


def test_every_statement_of_the_example_migrations_is_judged() -> None:
    migrations = Path(__file__).parents[2] / "examples" / "shop" / "migrations"
    files = [p.read_text() for p in sorted(migrations.glob("*.sql"))]
    assert "unknown-statement" not in rules(*files)


def test_whole_table_write_is_an_error_unless_the_table_is_known_to_be_small_and_points_to_batches() -> None:
    f = only("whole-table-write", "UPDATE t SET note = upper(note)")                 # size unknown
    assert (f.severity, f.lock, f.effect) == ("error", "ROW EXCLUSIVE", "scan")
    assert "UPDATE t SET note = upper(note)" in f.fix and "LIMIT 5000" in f.fix
    assert only("whole-table-write", "UPDATE t SET note = upper(note)", catalog=CATALOG).severity == "warning"
    assert only("whole-table-write", "DELETE FROM o", catalog=CATALOG).severity == "warning"     # 10 rows
    assert "DELETE FROM o WHERE ctid" in only("whole-table-write", "DELETE FROM o").fix


def test_drop_default_judges_by_the_live_not_null() -> None:
    f = only("drop-default-not-null", "ALTER TABLE t ALTER COLUMN id DROP DEFAULT", catalog=CATALOG)
    assert f.severity == "error" and f.breaks_old_release
    assert "drop-default-not-null" not in rules("ALTER TABLE t ALTER COLUMN note DROP DEFAULT", catalog=CATALOG)
    assert only("drop-default-not-null", "ALTER TABLE t ALTER COLUMN note DROP DEFAULT").severity == "warning"
    assert "drop-default-not-null" not in rules("ALTER TABLE t ALTER COLUMN id SET DEFAULT 0", catalog=CATALOG)


def test_a_new_enum_label_is_flagged_only_where_it_is_used_in_the_same_transaction() -> None:
    found = lint("ALTER TYPE mood ADD VALUE 'meh';\nALTER TYPE mood ADD VALUE 'ok' AFTER 'meh';\n"
                 "SELECT 1;\nUPDATE t SET note = 'meh' WHERE id = 1;", catalog=CATALOG)
    assert [(f.rule, f.line) for f in found] == [("enum-value-used-in-same-transaction", 4)]
    assert rules("ALTER TYPE mood ADD VALUE 'meh'", "UPDATE t SET note = 'meh' WHERE id = 1") == []


def test_lock_table_names_the_mode_it_holds() -> None:
    f = only("lock-table", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", catalog=CATALOG)
    assert f.lock == "ACCESS EXCLUSIVE" and "every query" in f.message
    assert only("lock-table", "LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE").lock == "SHARE ROW EXCLUSIVE"


# -- type changes judged with the live catalog: USING casts, empty tables, indexes rebuilt ----------------

def _with(table: Table, **changes: object) -> Catalog:
    import dataclasses
    return Catalog.of([dataclasses.replace(table, **changes)], indexes=CATALOG.indexes)  # type: ignore[arg-type]


@pytest.mark.parametrize("using", ["", " USING name::text", " USING CAST(name AS text)", " USING (name)::text"])
def test_a_cast_of_the_column_to_the_new_type_is_no_using_at_all(using: str) -> None:
    assert "alter-column-type" not in rules(f"ALTER TABLE t ALTER COLUMN name TYPE text{using}", catalog=CATALOG)


def test_a_using_that_casts_to_another_type_or_computes_is_a_rewrite() -> None:
    for sql in ("ALTER TABLE t ALTER COLUMN name TYPE text USING name::varchar(5)",
                "ALTER TABLE t ALTER COLUMN name TYPE text USING lower(name)"):
        assert only("alter-column-type", sql, catalog=CATALOG).effect == "rewrite"


def test_a_type_change_on_a_table_with_an_empty_file_is_not_flagged_unless_the_scripts_filled_it() -> None:
    [t] = [CATALOG.tables[("public", "t")]]
    empty = _with(t, bytes=0, rows=0)
    sql = "ALTER TABLE t ALTER COLUMN id TYPE bigint"
    assert rules(sql, catalog=empty) == []
    assert only("alter-column-type", "INSERT INTO t (id) VALUES (1)", sql, catalog=empty).effect == "rewrite"
    assert only("alter-column-type", sql, catalog=_with(t, bytes=8192)).effect == "rewrite"


def test_timestamptz_under_utc_names_the_indexes_it_rebuilds() -> None:
    t = CATALOG.tables[("public", "t")]
    indexed = _with(t, column_indexes={"ts": ("t_ts_idx",)},
                    index_defs={"t_ts_idx": "CREATE INDEX t_ts_idx ON public.t USING btree (ts)"})
    sql = "SET LOCAL TimeZone = 'UTC';\nALTER TABLE t ALTER COLUMN ts TYPE timestamptz"
    f = only("alter-column-type", sql, catalog=indexed)
    assert (f.effect, f.severity, f.lock) == ("scan", "error", "ACCESS EXCLUSIVE") and "t_ts_idx" in f.message
    assert "CREATE INDEX CONCURRENTLY t_ts_idx ON public.t USING btree (ts);" in f.fix
    assert "alter-column-type" not in rules(sql, catalog=CATALOG)                   # no index on ts
    assert "alter-column-type" not in rules("DROP INDEX t_ts_idx", sql, catalog=indexed)   # dropped first
    scripted = only("alter-column-type", "CREATE INDEX t_ts2 ON t (ts)", sql, catalog=CATALOG)
    assert "t_ts2" in scripted.message


def test_table_rewrite_is_quiet_where_the_live_table_already_is() -> None:
    t = CATALOG.tables[("public", "t")]
    live = _with(t, access_method="heap", tablespace="pg_default")
    assert "table-rewrite" not in rules("ALTER TABLE t SET ACCESS METHOD heap", catalog=live)
    assert "table-rewrite" not in rules("ALTER TABLE t SET TABLESPACE pg_default", catalog=live)
    f = only("table-rewrite", "ALTER TABLE t SET TABLESPACE fast", catalog=live)
    assert (f.lock, f.effect, f.severity) == ("ACCESS EXCLUSIVE", "rewrite", "error") and "pg_repack" in f.fix
    assert rules("ALTER TABLE t SET ACCESS METHOD heap") == ["table-rewrite"]               # no catalog: unknown


@pytest.mark.parametrize(("sql", "need"), [
    ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", 14), ("ALTER TABLE t SET ACCESS METHOD heap", 15),
    ("ALTER TABLE t ALTER COLUMN note SET COMPRESSION pglz", 14),
    ("MERGE INTO t USING o ON t.id = o.id WHEN MATCHED THEN DELETE", 15),
    ("ALTER TABLE t ALTER COLUMN twice SET EXPRESSION AS (id * 3)", 17)])
def test_a_form_newer_than_the_server_is_flagged_from_the_tables_version(sql: str, need: int) -> None:
    f = only("needs-newer-postgresql", sql, pg=need - 1)
    assert f.severity == "error" and f"PostgreSQL {need} or later" in f.message
    assert "needs-newer-postgresql" not in rules(sql, pg=need)
    assert "needs-newer-postgresql" not in rules("ALTER TABLE p DETACH PARTITION p1", pg=12)
