"""Migration sources: NNNN_name.sql directories and Alembic's offline SQL, cut per revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.database.sources import MigrationSourceError, from_directory, split_alembic_sql, up_to
from shipyard.database.statements import MigrationSyntaxError, parse_script


def write(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_directory_in_numeric_order_ignoring_other_files(tmp_path: Path) -> None:
    d = write(tmp_path / "m", {"10_ten.sql": "SELECT 10;", "2_two.sql": "SELECT 2;", "0001_one.sql": "SELECT 1;",
                               "README.md": "not a migration"})
    ms = from_directory(d)
    assert [(m.version, m.name) for m in ms] == [("0001", "one"), ("2", "two"), ("10", "ten")]
    assert ms[0].checksum != ms[1].checksum and len(ms[0].checksum) == 64


def test_bad_names_and_duplicates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationSourceError, match="NNNN_name.sql"):
        from_directory(write(tmp_path / "a", {"add_sku.sql": "SELECT 1;"}))
    with pytest.raises(MigrationSourceError, match="same version 0002"):
        from_directory(write(tmp_path / "b", {"0002_x.sql": "SELECT 1;", "0002_y.sql": "SELECT 2;"}))
    with pytest.raises(MigrationSourceError, match="does not exist"):
        from_directory(tmp_path / "nope")


def test_unparseable_sql_names_file_and_line(tmp_path: Path) -> None:
    d = write(tmp_path / "m", {"0001_ok.sql": "SELECT 1;", "0002_bad.sql": "SELECT 1;\n\nALTR TABLE t ADD x int;"})
    with pytest.raises(MigrationSyntaxError) as e:
        from_directory(d)
    assert "0002_bad.sql:3" in e.value.message and "ALTR" in e.value.message


def test_target_cuts_the_list(tmp_path: Path) -> None:
    ms = from_directory(write(tmp_path / "m", {f"000{i}_m{i}.sql": "SELECT 1;" for i in range(1, 5)}))
    assert [m.version for m in up_to(ms, "0002")] == ["0001", "0002"]
    assert [m.version for m in up_to(ms, "3")] == ["0001", "0002", "0003"]
    assert len(up_to(ms, None)) == 4
    with pytest.raises(MigrationSourceError, match="'0009' is not one of the migrations"):
        up_to(ms, "0009")


ALEMBIC = """BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> a1

CREATE TABLE items (id SERIAL NOT NULL, name TEXT NOT NULL, PRIMARY KEY (id));

INSERT INTO alembic_version (version_num) VALUES ('a1') RETURNING alembic_version.version_num;

-- Running upgrade a1 -> b2

ALTER TABLE items ADD COLUMN sku TEXT;

UPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = 'a1';

COMMIT;
"""


def test_alembic_offline_sql_is_cut_per_revision() -> None:
    ms = split_alembic_sql(ALEMBIC, "alembic.ini")
    assert [m.version for m in ms] == ["a1", "b2"]
    first = [s.kind for s in ms[0].script.statements]
    assert first == ["CreateStmt", "CreateStmt", "InsertStmt"]          # alembic_version goes with the first
    assert [s.kind for s in ms[1].script.statements] == ["AlterTableStmt", "UpdateStmt"]
    assert all(m.script.transactional for m in ms)                      # BEGIN/COMMIT dropped: ours per revision
    sku = ms[1].script.statements[0]
    assert ALEMBIC.splitlines()[sku.line - 1].startswith("ALTER TABLE items ADD COLUMN sku")


def test_script_transaction_mode_and_ignores() -> None:
    s = parse_script("-- shipyard:ignore rename-column old code never reads it\n"
                     "ALTER TABLE t RENAME COLUMN a TO b;\nCREATE INDEX CONCURRENTLY i ON t (b);", "x.sql")
    assert not s.transactional                              # CONCURRENTLY cannot run in a transaction block
    assert s.statements[0].ignores == {"rename-column": "old code never reads it"}
    assert s.statements[1].ignores == {}
    s = parse_script("ALTER TABLE t ADD c int;\nBEGIN;\nUPDATE t SET c = 1;\nCOMMIT;\nSELECT 1;", "y.sql")
    assert not s.transactional
    assert [st.in_transaction for st in s.statements] == [False, True, True, True, False]
    assert parse_script("ALTER TABLE t ADD c int;", "z.sql").transactional
    assert parse_script("-- shipyard:no-transaction\nALTER TABLE t ADD c int;", "z.sql").transactional is False
    assert parse_script("-- shipyard:contract\nALTER TABLE t DROP c;", "z.sql").contract


def test_a_do_block_that_commits_runs_outside_a_transaction() -> None:
    backfill = ("DO $$ BEGIN LOOP UPDATE t SET c = 0 WHERE ctid = ANY (ARRAY(SELECT ctid FROM t WHERE c IS NULL "
                "LIMIT 5000)); EXIT WHEN NOT FOUND; COMMIT; END LOOP; END $$;")
    assert not parse_script(backfill, "b.sql").transactional
    assert parse_script("DO $$ BEGIN UPDATE t SET c = 0; END $$;", "c.sql").transactional


def test_non_ascii_text_keeps_every_statement_whole() -> None:
    """pglast counts characters: cutting the bytes at its offsets lost a statement's tail (its alias)."""
    text = "INSERT INTO t (label) SELECT 'café ä' FROM generate_series(1, 3) g;\n-- shipyard:ignore x fine ü\nSELECT 'ää' AS y;"
    s = parse_script(text, "f.sql")
    assert [(st.sql, st.line) for st in s.statements] == [
        ("INSERT INTO t (label) SELECT 'café ä' FROM generate_series(1, 3) g", 1), ("SELECT 'ää' AS y", 3)]
    assert s.statements[1].ignores == {"x": "fine ü"}
