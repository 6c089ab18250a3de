"""Declared backfills: the NNNN_name.backfill.yaml file read with file:line errors, ordered with
the .sql migrations, and the replication-lag throttle (on a fake lag reader: the machine has no
replica, so the real reader, pg_stat_replication, always answers "no replica" here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.database.backfill import ReplicaLagging, wait_for_replicas
from shipyard.database.backfill_spec import BackfillInvalid, parse_backfill
from shipyard.database.lint import lint_scripts
from shipyard.database.plan import phase_of
from shipyard.database.sources import MigrationSourceError, from_directory
from shipyard.database.statements import parse_script


def test_defaults_and_every_field() -> None:
    b = parse_backfill("table: orders\nset: status = 'open'\n", "0003_fill.backfill.yaml")
    assert (b.table, b.set, b.where, b.key) == (("orders",), "status = 'open'", None, None)
    assert (b.batch_size, b.pause, b.max_lag, b.statement_timeout) == (1000, 0.1, 10.0, 30.0)
    b = parse_backfill("table: app.Orders\nset: n = n + 1, label = 'x%'\nwhere: label LIKE 'y%'\nkey: Seq\n"
                       "batch_size: 250\npause: 0s\nmax_lag: 2s\nstatement_timeout: 5s\n", "f")
    assert b.table == ("app", "orders") and b.key == "seq" and b.where == "label LIKE 'y%'"
    assert (b.batch_size, b.pause, b.max_lag, b.statement_timeout) == (250, 0.0, 2.0, 5.0)
    assert b.statement == "UPDATE app.orders SET n = n + 1, label = 'x%' WHERE label LIKE 'y%'"


def test_every_problem_at_its_file_and_line() -> None:
    text = ("table: orders\n"
            "set: status = \n"              # line 2: not SQL
            "batch_size: lots\n"            # line 3
            "paus: 1s\n"                    # line 4: unknown
            "max_lag: 10\n")                # line 5: a bare number is no duration
    with pytest.raises(BackfillInvalid) as e:
        parse_backfill(text, "m/0004_fill.backfill.yaml")
    problems = e.value.problems
    assert any(p.startswith("m/0004_fill.backfill.yaml:2 not valid SQL") for p in problems), problems
    assert any(p.startswith("m/0004_fill.backfill.yaml:3 batch_size:") for p in problems), problems
    assert any(p.startswith("m/0004_fill.backfill.yaml:4 paus: unknown field") for p in problems), problems
    assert any(p.startswith("m/0004_fill.backfill.yaml:5 max_lag:") for p in problems), problems
    assert "table: orders" in (e.value.hint or "")


@pytest.mark.parametrize("text, where", [
    ("set: a = 1\n", ":1 table: required"),
    ("table: t\nset: a = 1; DROP TABLE t\n", ":2 set/where must be one plain SET list"),
    ("table: t\nset: a = 1\nwhere: true RETURNING *\n", ":2 set/where must be one plain SET list"),
    ("table: t\nset: [a]\n", ":2 set: must be a single value"),
    ("table: t\nset: a = 1\nkey: id; x\n", ":3 key: must be one column name"),
    ("table: t\ntable: u\nset: a = 1\n", ":2 table: given twice"),
    ("- table\n", ":1 the file must be a mapping"),
    ("table: t\nset: 'a = 1\n", " not valid YAML"),
])
def test_bad_declarations(text: str, where: str) -> None:
    with pytest.raises(BackfillInvalid) as e:
        parse_backfill(text, "f.backfill.yaml")
    assert any(p.startswith("f.backfill.yaml") and where in p for p in e.value.problems), e.value.problems


def test_ordered_with_the_sql_migrations_and_expand(tmp_path: Path) -> None:
    (tmp_path / "0001_add.sql").write_text("ALTER TABLE t ADD COLUMN n int;")
    (tmp_path / "0002_fill.backfill.yaml").write_text("table: t\nset: n = 0\nwhere: n IS NULL\n")
    (tmp_path / "0003_more.sql").write_text("SELECT 1;")
    (tmp_path / "notes.yaml").write_text("not: a migration")
    ms = from_directory(tmp_path)
    assert [(m.version, m.name, m.backfill is not None) for m in ms] == [
        ("0001", "add", False), ("0002", "fill", True), ("0003", "more", False)]
    assert ms[1].script.statements == () and phase_of(ms[1], []) == "expand"
    (tmp_path / "0002_other.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationSourceError, match="same version 0002"):
        from_directory(tmp_path)


def test_a_bad_file_in_the_directory_stops_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "0001_fill.backfill.yaml").write_text("table: t\nset: n = \n")
    with pytest.raises(BackfillInvalid, match=r"0001_fill.backfill.yaml:2"):
        from_directory(tmp_path)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def lag_reader(values: list[float | None]):  # noqa: ANN201
    async def read(_conn: object) -> float | None:
        return values.pop(0) if len(values) > 1 else values[0]
    return read


async def test_no_replica_or_small_lag_does_not_wait() -> None:
    t = FakeTime()
    assert await wait_for_replicas(None, 10.0, max_wait=60, read_lag=lag_reader([None]),  # type: ignore[arg-type]
                                   sleep=t.sleep, clock=t.clock) == 0
    assert await wait_for_replicas(None, 10.0, max_wait=60, read_lag=lag_reader([9.5]),  # type: ignore[arg-type]
                                   sleep=t.sleep, clock=t.clock) == 0
    assert t.slept == []


async def test_waits_while_the_lag_is_above_max_lag() -> None:
    t, log = FakeTime(), []
    waited = await wait_for_replicas(None, 4.0, max_wait=60, read_lag=lag_reader([30.0, 12.0, 5.0, 3.9]),  # type: ignore[arg-type]
                                     sleep=t.sleep, clock=t.clock, log=log.append)
    assert t.slept == [1.0, 1.0, 1.0] and waited == 3.0
    assert len(log) == 1 and "lag 30.0s is above max_lag 4s" in log[0]


async def test_a_replica_that_never_catches_up_stops_the_backfill_in_bounded_time() -> None:
    t = FakeTime()
    with pytest.raises(ReplicaLagging) as e:
        await wait_for_replicas(None, 1.0, max_wait=5.0, read_lag=lag_reader([50.0]),  # type: ignore[arg-type]
                                sleep=t.sleep, clock=t.clock)
    assert t.now == pytest.approx(5.0) and "above max_lag 1s" in e.value.message
    assert "resumes where it stopped" in (e.value.hint or "")


@pytest.mark.parametrize("update", [
    "UPDATE orders SET status = 'open'",
    "UPDATE app.orders SET n = n + 1, note = concat('a: ', note)",
])
def test_lint_of_a_whole_table_update_offers_the_declared_backfill_filled_in(update: str) -> None:
    found = [f for f in lint_scripts([parse_script(update + ";", "0007_fill.sql")], 15)
             if f.rule == "whole-table-write"]
    assert len(found) == 1 and found[0].severity == "error"
    fix = found[0].fix
    assert "NNNN_name.backfill.yaml" in fix
    declaration = "\n".join(line for line in fix.splitlines() if not line.startswith("--"))
    assert parse_backfill(declaration, "suggested").statement == update     # the fix is a valid declaration


def test_a_where_inside_set_is_refused() -> None:
    with pytest.raises(BackfillInvalid, match=r"f:2 set: holds a WHERE"):
        parse_backfill("table: t\nset: n = 1 WHERE true\n", "f")
