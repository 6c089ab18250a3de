"""Building and dropping indexes. A plain CREATE INDEX holds SHARE on the table for the whole
build (no INSERT/UPDATE/DELETE meanwhile); CONCURRENTLY builds in the background but cannot
run inside a transaction block."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pglast import ast, enums

from shipyard.database.findings import Finding
from shipyard.database.locks import ACCESS_EXCLUSIVE, SHARE
from shipyard.database.rules.base import (
    Context,
    RuleInfo,
    alter_commands,
    altered_table,
    check,
    ident,
    rows_note,
    table_name,
)
from shipyard.database.rules.schema import ATT, CON, qualified
from shipyard.database.statements import Statement, cannot_run_in_transaction

OWN_FILE = "-- in a migration file of its own (CONCURRENTLY cannot run inside a transaction):\n"
INVALID_NOTE = ("-- if it fails it leaves an INVALID index behind: DROP INDEX CONCURRENTLY it, then run this again")


@check(RuleInfo("create-index-non-concurrent", "CREATE INDEX without CONCURRENTLY on an existing table blocks "
                "writes for the whole build", SHARE, "scan"))
def create_index(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.IndexStmt) or node.concurrent or not ctx.existing(node.relation):
        return
    table = table_name(node.relation)
    key = ctx.key(node.relation)
    if not node.relation.inh and (ctx.schema.partitioned(key) or ctx.schema.catalog_table(key) is None):
        return      # ON ONLY a partitioned table: an empty, invalid parent index, the first step of the safe way
    concurrent = re.sub(r"^(\s*CREATE\s+(?:UNIQUE\s+)?INDEX)\b", r"\1 CONCURRENTLY", stmt.sql, count=1,
                        flags=re.IGNORECASE)
    if ctx.schema.partitioned(key):
        name = ident(node.idxname or "new_index")
        fix = (f"-- {table} is partitioned, which CONCURRENTLY does not support: build the parent's index empty, "
               f"then each partition's concurrently and attach it:\n"
               + re.sub(r"\bON\s+(ONLY\s+)?", "ON ONLY ", stmt.sql, count=1, flags=re.IGNORECASE) + ";\n"
               f"-- for each partition p: CREATE INDEX CONCURRENTLY p_idx ON p (...);  "
               f"ALTER INDEX {name} ATTACH PARTITION p_idx;")
    else:
        fix = OWN_FILE + concurrent + ";\n" + INVALID_NOTE
    yield ctx.finding(stmt, "create-index-non-concurrent",
                      f"building the index holds a SHARE lock on {table}{rows_note(ctx, key)} until it is done: "
                      "every INSERT, UPDATE and DELETE on it waits", fix, table=table)


@check(RuleInfo("drop-index-non-concurrent", "DROP INDEX without CONCURRENTLY takes ACCESS EXCLUSIVE on the "
                "index's table", ACCESS_EXCLUSIVE, "none"))
def drop_index(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.DropStmt) or node.removeType != enums.ObjectType.OBJECT_INDEX or node.concurrent:
        return
    for names in node.objects or ():
        index = ctx.schema.resolve_index(*qualified(names))
        table_key = ctx.schema.index_table(index)
        if table_key is not None and ctx.schema.is_new(table_key):
            continue
        written = ".".join(ident(n.sval) for n in names)
        table = table_name(table_key) if table_key else None
        on = f"its table {table}" if table else "its table"
        yield ctx.finding(stmt, "drop-index-non-concurrent",
                          f"dropping index {written} takes ACCESS EXCLUSIVE on {on}: every query on it waits, and "
                          "queues behind any long-running transaction", OWN_FILE +
                          f"DROP INDEX CONCURRENTLY IF EXISTS {written};", table=table)


def _is_concurrent(node: Any) -> bool:
    if isinstance(node, (ast.IndexStmt, ast.DropStmt)):
        return bool(node.concurrent)
    if isinstance(node, ast.ReindexStmt):
        return any(getattr(p, "defname", "") == "concurrently" for p in node.params or ())
    if isinstance(node, ast.AlterTableStmt):
        return any(isinstance(c, ast.AlterTableCmd) and getattr(c.def_, "concurrent", False) for c in node.cmds or ())
    return False


@check(RuleInfo("concurrently-in-transaction", "a CONCURRENTLY statement (or VACUUM, ...) inside a transaction "
                "block: PostgreSQL refuses it and the migration fails", None, "none"))
def concurrently_in_transaction(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    if not stmt.in_transaction or not cannot_run_in_transaction(stmt.node):
        return
    what = "CONCURRENTLY" if _is_concurrent(stmt.node) else stmt.first_line.split()[0].upper()
    yield ctx.finding(stmt, "concurrently-in-transaction",
                      f"PostgreSQL refuses {what} inside a transaction block, so this migration fails here",
                      f"-- move it out of the BEGIN ... COMMIT block, best into a migration file of its own:\n"
                      f"{stmt.sql};")


@check(RuleInfo("add-unique-without-index", "ADD CONSTRAINT ... UNIQUE / PRIMARY KEY builds its index under "
                "ACCESS EXCLUSIVE; build it CONCURRENTLY and attach it with USING INDEX", ACCESS_EXCLUSIVE, "scan"))
def add_unique_without_index(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    table = table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_AddConstraint, ATT.AT_AddColumn):
        if cmd.subtype == ATT.AT_AddConstraint:
            cons = [(cmd.def_, [k.sval for k in cmd.def_.keys or ()])] if isinstance(cmd.def_, ast.Constraint) else []
        else:
            col = cmd.def_
            cons = [(c, [col.colname]) for c in col.constraints or () if isinstance(c, ast.Constraint)]
        for con, columns in cons:
            if con.contype not in (CON.CONSTR_UNIQUE, CON.CONSTR_PRIMARY) or con.indexname:
                continue
            yield _unique_finding(stmt, ctx, rv, table, con, columns, cmd.subtype == ATT.AT_AddColumn)


def _unique_finding(stmt: Statement, ctx: Context, rv: Any, table: str, con: Any, columns: list[str],
                    new_column: bool) -> Finding:
    primary = con.contype == CON.CONSTR_PRIMARY
    kind = "PRIMARY KEY" if primary else "UNIQUE"
    cols = ", ".join(ident(c) for c in columns)
    default = f"{rv.relname}_pkey" if primary else f"{rv.relname}_{'_'.join(columns)}_key"
    name = ident(con.conname or default)
    steps = []
    if new_column:
        steps.append(f"-- first add the column without {kind} (see the other findings for its type and default)")
    steps.append(OWN_FILE + f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({cols});")
    if primary:
        steps.append("-- the columns must be NOT NULL first, or the next step scans under ACCESS EXCLUSIVE "
                     "(see set-not-null)")
    steps.append(f"-- then, in a later migration:\nALTER TABLE {table} ADD CONSTRAINT {name} {kind} "
                 f"USING INDEX {name};")
    return ctx.finding(stmt, "add-unique-without-index",
                       f"adding {kind} ({cols}) builds its unique index while holding ACCESS EXCLUSIVE on "
                       f"{table}{rows_note(ctx, ctx.key(rv))}: every query on it waits for the build",
                       "\n".join(steps), table=table)


@check(RuleInfo("concurrent-index-on-partitioned", "CREATE INDEX CONCURRENTLY on a partitioned table: PostgreSQL "
                "refuses it, so the migration fails", None, "none"))
def concurrent_index_on_partitioned(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.IndexStmt) or not node.concurrent or not ctx.schema.partitioned(ctx.key(node.relation)):
        return
    table = table_name(node.relation)
    name = ident(node.idxname or "new_index")
    parent = re.sub(r"\bCONCURRENTLY\s+", "", stmt.sql, count=1, flags=re.IGNORECASE)
    parent = re.sub(r"\bON\s+(ONLY\s+)?", "ON ONLY ", parent, count=1, flags=re.IGNORECASE)
    yield ctx.finding(stmt, "concurrent-index-on-partitioned",
                      f"{table} is partitioned and PostgreSQL cannot build an index on a partitioned table "
                      "CONCURRENTLY: the migration fails with `cannot create index on partitioned table "
                      "concurrently`",
                      f"-- the parent's index, empty and invalid (catalog only, brief lock):\n{parent};\n"
                      f"-- then for each partition p, in files of their own:\n"
                      f"-- CREATE INDEX CONCURRENTLY p_idx ON p (...);  ALTER INDEX {name} ATTACH PARTITION p_idx;\n"
                      f"-- the parent's index becomes valid once every partition's is attached", table=table)
