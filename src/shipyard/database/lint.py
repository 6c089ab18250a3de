"""`shipyard db lint`: judge migration scripts statement by statement, before anything runs.

The rules (shipyard.database.rules) are pure; this module walks the scripts in apply order
and keeps what each rule needs to know about everything before the statement: the schema
as the catalog and earlier statements left it, the transaction the statement runs in, and
the settings (lock_timeout, TimeZone) the scripts have set so far."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg
from pglast import ast, enums

from shipyard.database.connect import major_of
from shipyard.database.findings import Finding
from shipyard.database.rules import CHECKS, RULES, Context, RuleInfo
from shipyard.database.rules.locking import Settings
from shipyard.database.rules.schema import Catalog, CheckConstraint, Column, SchemaModel, Table, TableKey
from shipyard.database.rules.types import ColumnType
from shipyard.database.statements import Script, Statement

__all__ = ["RULES", "Catalog", "CheckConstraint", "Column", "ColumnType", "RuleInfo", "Table", "lint_scripts",
           "load_catalog"]

_TX = enums.TransactionStmtKind
_BEGIN = (_TX.TRANS_STMT_BEGIN, _TX.TRANS_STMT_START)
_END = (_TX.TRANS_STMT_COMMIT, _TX.TRANS_STMT_ROLLBACK, _TX.TRANS_STMT_PREPARE, _TX.TRANS_STMT_COMMIT_PREPARED,
        _TX.TRANS_STMT_ROLLBACK_PREPARED)


def _transaction_control(node: Any) -> str | None:
    if isinstance(node, ast.TransactionStmt):
        if node.kind in _BEGIN:
            return "begin"
        if node.kind in _END:
            return "end"
    return None


def lint_scripts(scripts: Sequence[Script], pg_version: int, *, assume_lock_timeout: bool = False,
                 catalog: Catalog | None = None) -> list[Finding]:
    """Findings for the scripts, in apply order. pg_version: server_version_num (150020) or a
    major (15). assume_lock_timeout: the runner sets lock_timeout itself, so scripts need not.
    Findings silenced by `-- shipyard:ignore` are kept, with `.ignored` set to the reason."""
    pg_major = major_of(pg_version)
    schema = SchemaModel(catalog)
    findings: list[Finding] = []
    last_tx = 0
    for script in scripts:
        settings = Settings()
        script_tx = last_tx = last_tx + 1
        block_tx: int | None = None
        for stmt in script.statements:
            control = _transaction_control(stmt.node)
            if script.transactional:
                tx = script_tx
            elif control == "begin" or block_tx is None:
                tx = last_tx = last_tx + 1
                block_tx = tx if control == "begin" else None
            else:
                tx = block_tx
            ctx = Context(pg_major=pg_major, schema=schema, source=script.source, tx=tx,
                          settings=settings.current(tx), contract=script.contract,
                          assume_lock_timeout=assume_lock_timeout)
            findings.extend(_judge(stmt, ctx))
            schema.apply(stmt.node, tx)
            settings.observe(stmt, tx)
            if control == "end":
                block_tx = None
    return _one_lock_timeout_per_script(findings)


def _one_lock_timeout_per_script(findings: list[Finding]) -> list[Finding]:
    """A missing lock_timeout is one fix at the top of a file: say it once per file, at its
    first statement that needs it, and count the others."""
    firsts: dict[str, int] = {}
    counts: dict[str, int] = {}
    for i, f in enumerate(findings):
        if f.rule == "missing-lock-timeout" and f.ignored is None:
            firsts.setdefault(f.source, i)
            counts[f.source] = counts.get(f.source, 0) + 1
    out = []
    for i, f in enumerate(findings):
        if f.rule == "missing-lock-timeout" and f.ignored is None:
            if firsts[f.source] != i:
                continue
            more = counts[f.source] - 1
            if more:
                f = dataclasses.replace(f, message=f"{f.message} (and {more} later statement(s) of this file)")
        out.append(f)
    return out


def _judge(stmt: Statement, ctx: Context) -> list[Finding]:
    found = [f for check in CHECKS for f in check(stmt, ctx)]
    silenced = [dataclasses.replace(f, ignored=stmt.ignores[f.rule] or "no reason given")
                if f.rule in stmt.ignores else f for f in found]
    for rule in stmt.ignores:
        if rule not in RULES:
            silenced.append(ctx.finding(stmt, "unknown-ignore",
                                        f"`-- shipyard:ignore {rule}` names no rule, so it silences nothing",
                                        "use one of the ids `shipyard db lint --rules` lists"))
    return silenced


_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.reltuples, c.relkind = 'p',
       CASE WHEN c.relkind = 'r' AND NOT c.relhassubclass THEN pg_relation_size(c.oid) END, am.amname,
       coalesce(ts.spcname, dts.spcname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace
LEFT JOIN pg_database d ON d.datname = current_database() LEFT JOIN pg_tablespace dts ON dts.oid = d.dattablespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
"""
_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY a.attrelid, a.attnum
"""
_CHECKS = """
SELECT conrelid, conname, pg_get_expr(conbin, conrelid), convalidated
FROM pg_constraint WHERE contype = 'c' AND conrelid <> 0
"""
_INDEXES = """
SELECT n.nspname, ic.relname, tn.nspname, t.relname
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE tn.nspname <> 'information_schema' AND tn.nspname !~ '^pg_'
"""
_INDEXED_COLUMNS = """
SELECT DISTINCT i.indrelid, a.attname, ic.relname, pg_get_indexdef(i.indexrelid),
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0 AND (
    a.attnum = ANY (i.indkey::int2[])
    OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
               AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2, 3
"""
_FUNCTIONS = """
SELECT n.nspname, p.proname, max(p.provolatile::text)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace GROUP BY 1, 2
"""


async def _rows(conn: psycopg.AsyncConnection, sql: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql)
    return await cur.fetchall()


async def load_catalog(conn: psycopg.AsyncConnection) -> Catalog:
    """What the rules need of the live schema, read from pg_catalog (read-only, a few queries)."""
    columns: dict[int, dict[str, Column]] = {}
    for relid, name, type_text, not_null in await _rows(conn, _COLUMNS):
        columns.setdefault(relid, {})[name] = Column(name, ColumnType.parse(type_text), bool(not_null))
    checks: dict[int, list[CheckConstraint]] = {}
    for relid, name, expression, validated in await _rows(conn, _CHECKS):
        checks.setdefault(relid, []).append(CheckConstraint(name, expression or "", bool(validated)))
    indexed: dict[int, dict[str, tuple[str, ...]]] = {}
    index_defs: dict[int, dict[str, str]] = {}
    constraint_indexes: dict[int, set[str]] = {}
    for relid, column, index, definition, of_constraint in await _rows(conn, _INDEXED_COLUMNS):
        by_column = indexed.setdefault(relid, {})
        by_column[column] = (*by_column.get(column, ()), index)
        index_defs.setdefault(relid, {})[index] = definition
        if of_constraint:
            constraint_indexes.setdefault(relid, set()).add(index)
    tables = [Table(schema=nsp, name=rel, columns=columns.get(oid, {}),
                    rows=None if reltuples is None or reltuples < 0 else int(reltuples),
                    checks=tuple(checks.get(oid, ())), partitioned=bool(partitioned),
                    bytes=None if size is None else int(size),
                    column_indexes=indexed.get(oid, {}), index_defs=index_defs.get(oid, {}),
                    access_method=am, tablespace=space,
                    constraint_indexes=frozenset(constraint_indexes.get(oid, ())))
              for oid, nsp, rel, reltuples, partitioned, size, am, space in await _rows(conn, _TABLES)]
    indexes: dict[TableKey, TableKey] = {(nsp, idx): (tnsp, tbl)
                                         for nsp, idx, tnsp, tbl in await _rows(conn, _INDEXES)}
    functions: dict[str, str] = {}
    for nsp, name, volatility in await _rows(conn, _FUNCTIONS):
        functions[f"{nsp}.{name}"] = volatility
        functions[name] = max(functions.get(name, volatility), volatility)
    path = (await _rows(conn, "SELECT current_schemas(false)"))[0][0]
    return Catalog.of(tables, indexes=indexes, functions=functions, search_path=tuple(path) or ("public",))
