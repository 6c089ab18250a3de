"""A declared backfill: the safe form of a big UPDATE. A file `NNNN_name.backfill.yaml` in the
migrations directory says which rows to change and how (table, set, where, key) and how gently
(batch_size, pause, max_lag, statement_timeout); shipyard runs it in batches of their own
transactions (database/backfill.py). Read here, before anything runs, with file:line errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pglast import ast, parse_sql, parser

from shipyard.spec.durations import parse_duration

from .connect import DatabaseError

SUFFIX = ".backfill.yaml"
DEFAULT_BATCH = 1000
FIELDS = ("table", "set", "where", "key", "batch_size", "pause", "max_lag", "statement_timeout")
EXAMPLE = ("table: orders\nset: status = 'open'\nwhere: status IS NULL\n"
           "batch_size: 1000   # rows per transaction\npause: 100ms      # between batches")


class BackfillInvalid(DatabaseError):
    """A backfill declaration is wrong; `problems` has one `file:line what` per problem."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid backfill declaration:\n" + "\n".join(problems),
                         f"a backfill file looks like:\n{EXAMPLE}")


@dataclass(frozen=True)
class Backfill:
    source: str
    table: tuple[str, ...]
    """('orders',) or ('app', 'orders'): the names as PostgreSQL folds them."""
    set: str
    """The SET list as written: `status = 'open', n = n + 1`."""
    where: str | None
    key: str | None
    """The column batches are cut on; None: the table's one-column primary key."""
    batch_size: int = DEFAULT_BATCH
    pause: float = 0.1
    max_lag: float = 10.0
    statement_timeout: float = 30.0

    @property
    def table_text(self) -> str:
        return ".".join(self.table)

    @property
    def statement(self) -> str:
        """The whole-table UPDATE this backfill stands for (what the linter would have seen)."""
        return f"UPDATE {self.table_text} SET {self.set}" + (f" WHERE {self.where}" if self.where else "")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _duration(text: Any, where: str, field: str, problems: list[str]) -> float | None:
    try:
        seconds = parse_duration(str(text))
    except ValueError as e:
        problems.append(f"{where} {field}: {e} (e.g. 100ms, 2s)")
        return None
    if field != "pause" and seconds <= 0:
        problems.append(f"{where} {field}: must be more than 0")
        return None
    return seconds


def _check_sql(decl: dict[str, Any], lines: dict[str, str], problems: list[str]) -> tuple[str, ...] | None:
    """The pieces must make one valid UPDATE (parsed by PostgreSQL's own grammar), and nothing else."""
    table, sets, where = decl.get("table"), decl.get("set"), decl.get("where")
    if not isinstance(table, str) or not isinstance(sets, str):
        return None
    text = f"UPDATE {table} SET {sets}" + (f" WHERE {where}" if isinstance(where, str) else "")
    try:
        nodes = parse_sql(text)
    except parser.ParseError as e:
        problems.append(f"{lines['set']} not valid SQL for UPDATE {table} SET ... WHERE ...: {e.args[0]}")
        return None
    stmt = nodes[0].stmt if len(nodes) == 1 else None
    if not isinstance(stmt, ast.UpdateStmt) or stmt.fromClause or getattr(stmt, "returningList", None) or getattr(stmt, "returningClause", None) or stmt.withClause:
        problems.append(f"{lines['set']} set/where must be one plain SET list and condition "
                        "(no ';', FROM, RETURNING or WITH)")
        return None
    if where is None and stmt.whereClause is not None:
        problems.append(f"{lines['set']} set: holds a WHERE; give the condition as where:")
        return None
    rv = stmt.relation
    if rv.alias is not None:
        problems.append(f"{lines['table']} table: give a table name, optionally schema-qualified (app.orders)")
        return None
    return tuple(p for p in (rv.schemaname, rv.relname) if p)


def parse_backfill(text: str, source: str) -> Backfill:
    """The declaration in `text`, or BackfillInvalid listing every problem at its file:line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else f"{source}:"
        raise BackfillInvalid([f"{where} not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    if not isinstance(root, yaml.MappingNode):
        line = _line(root) if root is not None else 1
        raise BackfillInvalid([f"{source}:{line} the file must be a mapping of {', '.join(FIELDS)}"])
    problems: list[str] = []
    decl: dict[str, Any] = {}
    lines: dict[str, str] = {}
    for key_node, value_node in root.value:
        name = key_node.value
        where = f"{source}:{_line(key_node)}"
        if name not in FIELDS:
            problems.append(f"{where} {name}: unknown field; a backfill has {', '.join(FIELDS)}")
            continue
        if name in decl:
            problems.append(f"{where} {name}: given twice (first at {lines[name]})")
            continue
        if not isinstance(value_node, yaml.ScalarNode):
            problems.append(f"{where} {name}: must be a single value, not a list or mapping")
            continue
        decl[name] = yaml.safe_load(yaml.serialize(value_node))
        lines[name] = where
    for required in ("table", "set"):
        if required not in lines:
            problems.append(f"{source}:{_line(root)} {required}: required")
    for name in ("table", "set", "where", "key"):
        if name in decl and (not isinstance(decl[name], str) or not decl[name].strip()):
            problems.append(f"{lines[name]} {name}: must be non-empty text")
            decl.pop(name)
    size = decl.get("batch_size", DEFAULT_BATCH)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1_000_000:
        problems.append(f"{lines.get('batch_size', source)} batch_size: must be a whole number of rows "
                        f"from 1 to 1000000, got {size!r}")
    timings = {}
    for name, default in (("pause", "100ms"), ("max_lag", "10s"), ("statement_timeout", "30s")):
        timings[name] = _duration(decl.get(name, default), lines.get(name, source), name, problems)
    table = _check_sql(decl, lines, problems)
    key = decl.get("key")
    if isinstance(key, str) and not key.replace("_", "a").isalnum():
        problems.append(f"{lines['key']} key: must be one column name (letters, digits, _)")
    if problems or table is None:
        raise BackfillInvalid(problems or [f"{source}:{_line(root)} table and set are required"])
    return Backfill(source=source, table=table, set=decl["set"].strip(), where=(decl.get("where") or None),
                    key=key.lower() if key else None, batch_size=size, pause=timings["pause"] or 0.0, max_lag=timings["max_lag"] or 10.0,
                    statement_timeout=timings["statement_timeout"] or 30.0)
