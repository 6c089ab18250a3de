"""Maintenance statements that do not belong in a migration run during traffic: they rebuild
a table or its indexes while holding locks the application queues behind."""

from __future__ import annotations

from collections.abc import Iterator

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
from shipyard.database.rules.schema import ATT
from shipyard.database.statements import Statement

REPACK = "pg_repack (an extension plus a command-line tool that rebuilds tables and indexes online)"
RIO = enums.ReindexObjectType


@check(RuleInfo("reindex-non-concurrent", "REINDEX without CONCURRENTLY blocks writes to the table, and reads "
                "that use the index, until the rebuild is done", SHARE, "scan"))
def reindex(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.ReindexStmt) or any(getattr(p, "defname", "") == "concurrently"
                                                     for p in node.params or ()):
        return
    table = None
    if node.kind in (RIO.REINDEX_OBJECT_TABLE, RIO.REINDEX_OBJECT_INDEX) and node.relation is not None:
        if node.kind == RIO.REINDEX_OBJECT_TABLE:
            key = ctx.key(node.relation)
        else:
            key = ctx.schema.index_table(ctx.schema.resolve_index(node.relation.schemaname, node.relation.relname))
        if key is not None and ctx.schema.is_new(key):
            return
        table = table_name(node.relation) if node.kind == RIO.REINDEX_OBJECT_TABLE else table_name(key) if key else None
    kind = {RIO.REINDEX_OBJECT_INDEX: "INDEX", RIO.REINDEX_OBJECT_TABLE: "TABLE", RIO.REINDEX_OBJECT_SCHEMA: "SCHEMA",
            RIO.REINDEX_OBJECT_DATABASE: "DATABASE"}.get(node.kind, "SYSTEM")
    target = table_name(node.relation) if node.relation is not None else ident(node.name or "")
    message = (f"REINDEX {kind} {target} holds SHARE on {table or 'each table'} (no writes) and ACCESS EXCLUSIVE on "
               "each index it rebuilds (queries that would use it wait) until it is done")
    if ctx.pg_major >= 12 and kind != "SYSTEM":
        yield ctx.finding(stmt, "reindex-non-concurrent", message,
                          f"-- in a migration file of its own (it cannot run inside a transaction):\n"
                          f"REINDEX {kind} CONCURRENTLY {target};   -- PostgreSQL >= 12", table=table)
    else:
        yield ctx.finding(stmt, "reindex-non-concurrent", message,
                          f"-- PostgreSQL {ctx.pg_major} has no REINDEX CONCURRENTLY: build a new index with "
                          "CREATE INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY the old one and rename the new one, "
                          f"or use {REPACK}", table=table, severity="warning")


def _vacuum_full(node: ast.VacuumStmt) -> bool:
    for opt in node.options or ():
        if getattr(opt, "defname", "") == "full":
            arg = opt.arg
            if arg is None or (isinstance(arg, ast.Boolean) and arg.boolval) or \
                    (isinstance(arg, ast.String) and arg.sval.lower() in ("true", "on", "1")) or \
                    (isinstance(arg, ast.Integer) and arg.ival):
                return True
    return False


@check(RuleInfo("vacuum-full", "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE", ACCESS_EXCLUSIVE, "rewrite"))
def vacuum_full(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.VacuumStmt) or not node.is_vacuumcmd or not _vacuum_full(node):
        return
    rels = [r.relation for r in node.rels or () if isinstance(r, ast.VacuumRelation) and r.relation is not None]
    tables = [rv for rv in rels if ctx.existing(rv)] if rels else [None]
    for rv in tables:
        what = table_name(rv) if rv is not None else "every table of the database"
        rows = rows_note(ctx, ctx.key(rv)) if rv is not None else ""
        plain = f"VACUUM (ANALYZE) {what};" if rv is not None else "VACUUM (ANALYZE);"
        yield ctx.finding(stmt, "vacuum-full",
                          f"VACUUM FULL copies {what}{rows} into a new file under ACCESS EXCLUSIVE: every query on "
                          "it waits for the copy",
                          f"-- a plain VACUUM makes the space reusable without blocking reads or writes:\n{plain}\n"
                          f"-- to give the space back to the operating system online, use {REPACK}",
                          table=table_name(rv) if rv is not None else None)


@check(RuleInfo("cluster", "CLUSTER rewrites the table in index order under ACCESS EXCLUSIVE", ACCESS_EXCLUSIVE,
                "rewrite"))
def cluster(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.ClusterStmt) or (node.relation is not None and not ctx.existing(node.relation)):
        return
    table = table_name(node.relation) if node.relation is not None else None
    what = table or "every table clustered before"
    yield ctx.finding(stmt, "cluster",
                      f"CLUSTER copies {what} in index order under ACCESS EXCLUSIVE: every query on it waits",
                      f"-- reorder online instead: {REPACK}, e.g. pg_repack --table {table or '<table>'} "
                      f"--order-by <columns>", table=table)


@check(RuleInfo("detach-partition-non-concurrent", "DETACH PARTITION without CONCURRENTLY takes ACCESS EXCLUSIVE "
                "on the partitioned table", ACCESS_EXCLUSIVE, "none"))
def detach_partition(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    table = table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_DetachPartition):
        part = cmd.def_
        if not isinstance(part, ast.PartitionCmd) or part.concurrent or getattr(part, "name", None) is None:
            continue
        child = table_name(part.name)
        message = (f"detaching {child} takes ACCESS EXCLUSIVE on {table}: every query on the partitioned table "
                   "waits, and it queues behind any long-running query")
        if ctx.pg_major >= 14:
            yield ctx.finding(stmt, "detach-partition-non-concurrent", message,
                              f"-- in a migration file of its own (it cannot run inside a transaction; not possible "
                              f"while {table} has a DEFAULT partition):\n"
                              f"ALTER TABLE {table} DETACH PARTITION {child} CONCURRENTLY;", table=table)
        else:
            yield ctx.finding(stmt, "detach-partition-non-concurrent", message,
                              f"-- PostgreSQL {ctx.pg_major} has no DETACH ... CONCURRENTLY (14 and later do): run it "
                              "with a short lock_timeout and retry, at a quiet time", table=table,
                              severity="warning")


@check(RuleInfo("set-logged", "SET LOGGED / SET UNLOGGED rewrites the table under ACCESS EXCLUSIVE (LOGGED also "
                "writes all of it to the WAL)", ACCESS_EXCLUSIVE, "rewrite"))
def set_logged(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    table = table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_SetLogged, ATT.AT_SetUnLogged):
        logged = cmd.subtype == ATT.AT_SetLogged
        what = "SET LOGGED" if logged else "SET UNLOGGED"
        fix = (f"-- a new {'logged' if logged else 'unlogged'} table filled in batches, then swapped in:\n"
               f"CREATE {'' if logged else 'UNLOGGED '}TABLE {table}_new (LIKE {table} INCLUDING ALL);\n"
               f"-- copy in batches (a trigger on {table} keeps the copied rows current), then in one short "
               f"transaction:\n-- ALTER TABLE {table} RENAME TO {table}_old; ALTER TABLE {table}_new RENAME TO "
               f"{table};\n-- or run it at a quiet time if {table} is small")
        if not logged:
            fix += "\n-- and remember: an UNLOGGED table is emptied after a crash and not replicated"
        yield ctx.finding(stmt, "set-logged",
                          f"{what} copies {table}{rows_note(ctx, ctx.key(rv))} into a new file under ACCESS "
                          f"EXCLUSIVE{' and writes every row to the WAL' if logged else ''}: every query on it waits",
                          fix, table=table)
