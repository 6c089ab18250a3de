"""Statements on a table's rows rather than its shape: emptying it, writing every row in one
transaction, locking it explicitly. Their locks are held until the migration's transaction
ends, and the running release queues behind them (or loses its data)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import yaml
from pglast import ast, enums
from pglast.stream import RawStream

from shipyard.database.backfill_spec import DEFAULT_BATCH
from shipyard.database.findings import Finding
from shipyard.database.locks import (
    ACCESS_EXCLUSIVE,
    ROW_EXCLUSIVE,
    blocks_reads,
    blocks_writes,
    from_lock_statement,
)
from shipyard.database.rules.base import BATCH, Context, RuleInfo, check, ident, rows_note, table_name
from shipyard.database.statements import Statement


@check(RuleInfo("truncate", "TRUNCATE empties an existing table under ACCESS EXCLUSIVE: the running release loses "
                "its rows, and a rollback of the release does not bring them back", ACCESS_EXCLUSIVE, "none"))
def truncate(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.TruncateStmt) or node.behavior == enums.DropBehavior.DROP_CASCADE:
        return       # CASCADE: truncate-cascade says more
    # not breaks_old_release: that would make it a contract migration, where such findings do not
    # count; losing the rows is as bad after the old release is gone
    for rv in node.relations or ():
        if not ctx.existing(rv):
            continue
        table = table_name(rv)
        yield ctx.finding(stmt, "truncate",
                          f"TRUNCATE {table}{rows_note(ctx, ctx.key(rv))} takes ACCESS EXCLUSIVE (every query waits) "
                          "and deletes every row the running release reads and writes; no rollback of the release "
                          "brings them back",
                          f"-- if the rows are really to go, delete them in batches the application keeps up with:\n"
                          f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} LIMIT {BATCH}));"
                          f"   -- repeat until 0 rows\n"
                          f"-- if the table is no longer used: drop it in a migration marked -- shipyard:contract",
                          table=table)


def _yaml_text(text: str) -> str:
    """`text` as a YAML value: plain when it reads back the same, else double-quoted."""
    try:
        plain = yaml.safe_load(f"v: {text}") == {"v": text}
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text)


def backfill_form(table: str, sets: str) -> str:
    """The statement as a declared backfill (database/backfill_spec.py), filled in."""
    return (f"-- declare it as a backfill: shipyard runs it in batches of {DEFAULT_BATCH} rows, each its own short\n"
            "-- transaction, resumable after a crash, throttled by replication lag. Remove this UPDATE and add\n"
            "-- a file NNNN_name.backfill.yaml next to this one (numbered to run where the UPDATE was):\n"
            f"table: {_yaml_text(table)}\n"
            f"set: {_yaml_text(sets)}\n"
            "# where: <only the rows to change>   (optional)\n"
            f"batch_size: {DEFAULT_BATCH}\n"
            "pause: 100ms\n"
            "-- or by hand, in a file marked -- shipyard:no-transaction, each batch skipping rows already done:\n"
            f"-- UPDATE {table} SET {sets}\n"
            f"--   WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE <not yet done> LIMIT {BATCH}));"
            "   -- repeat until 0 rows")


@check(RuleInfo("whole-table-write", "UPDATE or DELETE without WHERE on an existing table locks every row until "
                "the migration commits: the running release's writes to any of them wait", ROW_EXCLUSIVE, "scan"))
def whole_table_write(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)) or node.whereClause is not None:
        return
    rv = node.relation
    if rv is None or not ctx.existing(rv):
        return
    table, key = table_name(rv), ctx.key(rv)
    rows = ctx.schema.rows(key)
    verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
    if isinstance(node, ast.UpdateStmt):
        sets = ", ".join(f"{ident(t.name)} = {RawStream()(t.val)}" if isinstance(t, ast.ResTarget) and t.name
                         and not isinstance(t.val, ast.MultiAssignRef) else "..." for t in node.targetList or ())
        fix = backfill_form(table, sets) if "..." not in sets and not node.fromClause else (
            f"-- in batches, each in its own transaction (a file marked -- shipyard:no-transaction),\n"
            f"-- each batch skipping rows already done:\n"
            f"UPDATE {table} SET {sets}\n"
            f"  WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE <not yet done> LIMIT {BATCH}));"
            f"   -- repeat until 0 rows")
    else:
        fix = (f"-- in batches, each in its own transaction:\n"
               f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} LIMIT {BATCH}));"
               f"   -- repeat until 0 rows")
    small = rows is not None and 0 <= rows <= BATCH
    yield ctx.finding(stmt, "whole-table-write",
                      f"{verb} of every row of {table}{rows_note(ctx, key)} in one transaction: each row stays locked "
                      "until the migration commits, so the running release's UPDATEs and DELETEs of them wait "
                      "(and the whole table's dead rows wait for VACUUM)", fix, table=table,
                      severity="warning" if small else None)


@check(RuleInfo("lock-table", "LOCK TABLE holds its lock until the migration's transaction ends: every statement "
                "after it in the file runs while the running release waits", "varies", "none"))
def lock_table(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.LockStmt):
        return
    mode = from_lock_statement(node.mode)
    if not (blocks_reads(mode) or blocks_writes(mode)):
        return
    for rv in node.relations or ():
        if not ctx.existing(rv):
            continue
        table = table_name(rv)
        stops = "every query" if blocks_reads(mode) else "every write"
        yield ctx.finding(stmt, "lock-table",
                          f"LOCK TABLE {table} IN {mode} MODE stops {stops} on {table} from here until the migration's "
                          "transaction commits, however long the rest of the file takes",
                          "-- take no explicit lock: each statement takes the lock it needs, only for itself;\n"
                          "-- if the statements must see the table unchanged, keep them few, in a file of their own,\n"
                          "-- with SET LOCAL lock_timeout = '2s' first", table=table, lock=mode)
