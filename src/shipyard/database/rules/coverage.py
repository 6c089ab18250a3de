"""A statement kind or ALTER TABLE sub-command that the DDL table (rules/catalog.py) marks as
not judged, or does not know at all, gets the finding `unknown-statement` ("unknown: not
judged"), so a statement no rule models is never reported as clean. Rows whose plain form
rewrites the table and that no topic rule covers are judged here too (`table-rewrite`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast

from shipyard.database.findings import Finding
from shipyard.database.locks import ACCESS_EXCLUSIVE
from shipyard.database.rules.base import Context, RuleInfo, altered_table, check, rows_note, table_name
from shipyard.database.rules.catalog import ALTER_TABLE, statement_entry, unjudged_part
from shipyard.database.rules.locking import command_variant
from shipyard.database.rules.schema import ATT, Table
from shipyard.database.statements import Statement


def _kind(stmt: Statement) -> str:
    words = stmt.sql.split()
    return " ".join(words[:2]).upper() if words else type(stmt.node).__name__


def unjudged(stmt: Statement) -> str | None:
    """What of the statement no rule models (None: all of it is judged), from the DDL table."""
    part = unjudged_part(stmt.node)
    if part is None:
        return None
    what, _ = part
    if isinstance(stmt.node, ast.AlterTableStmt) and not what.endswith("Stmt"):
        return f"{_kind(stmt)} ... {what}"
    return f"{_kind(stmt)} ({what})"


@check(RuleInfo("unknown-statement", "a statement kind (or ALTER TABLE sub-command) no rule models: unknown, "
                "not judged - never reported as clean", None, "none", severity="warning"))
def unknown_statement(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    what = unjudged(stmt)
    if what is None:
        return
    part = unjudged_part(stmt.node)
    entry = part[1] if part else None
    known = f" (the DDL table says only: {entry.when})" if entry is not None and entry.when else ""
    yield ctx.finding(stmt, "unknown-statement",
                      f"unknown: not judged. No rule models {what}: its locks, whether it rewrites or scans a table, "
                      f"and whether the running release survives it are not judged, so it is not reported as clean"
                      f"{known}",
                      "-- rehearse it (`shipyard db check` reports the locks it took and the tables it rewrote),\n"
                      "-- then say why it is safe:\n-- shipyard:ignore unknown-statement <reason>", lock=entry.lock if entry is not None else None)


def _already_there(cmd: Any, table: Table | None) -> bool:
    """SET ACCESS METHOD / SET TABLESPACE to what the live table has already: PostgreSQL copies nothing."""
    if table is None or not cmd.name:
        return False
    if cmd.subtype == ATT.AT_SetAccessMethod:
        return cmd.name == table.access_method
    return cmd.subtype == ATT.AT_SetTableSpace and cmd.name == table.tablespace


@check(RuleInfo("table-rewrite", "an ALTER TABLE sub-command whose every form rewrites the table (SET TABLESPACE, "
                "SET ACCESS METHOD, SET EXPRESSION) under ACCESS EXCLUSIVE", ACCESS_EXCLUSIVE, "rewrite"))
def table_rewrite(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    table = table_name(rv)
    for cmd in stmt.node.cmds or ():
        entry = ALTER_TABLE.get(getattr(cmd, "subtype", None))
        if entry is None or "table-rewrite" not in entry.rules or _already_there(cmd, ctx.schema.catalog_table(
                ctx.key(rv))):
            continue
        yield ctx.finding(stmt, "table-rewrite",
                          f"{entry.form} rewrites every row of {table}{rows_note(ctx, ctx.key(rv))} under "
                          f"{entry.lock_for(ctx.pg_major)}: every query on it waits until the copy is done",
                          f"-- {entry.safe}", table=table, lock=entry.lock_for(ctx.pg_major))


def _forms_needing(node: Any) -> Iterator[tuple[str, int]]:
    """(form, oldest major that has it) for the statement and each ALTER TABLE sub-command."""
    entry = statement_entry(node)
    if entry is None:
        return
    variant = None
    if isinstance(node, ast.ReindexStmt) and any(getattr(p, "defname", "") == "concurrently"
                                                 for p in node.params or ()):
        variant = "concurrent"
    yield entry.form + (" CONCURRENTLY" if variant else ""), entry.needs(variant)
    if isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            sub = ALTER_TABLE.get(getattr(cmd, "subtype", None))
            if sub is not None:
                variant = command_variant(cmd)
                yield sub.form + (f" ({variant})" if variant else ""), sub.needs(variant)


@check(RuleInfo("needs-newer-postgresql", "a form the server's PostgreSQL does not have yet (DETACH PARTITION ... "
                "CONCURRENTLY or SET COMPRESSION before 14, SET ACCESS METHOD or MERGE before 15, SET EXPRESSION "
                "before 17, ...): the migration fails there", None, "none"))
def needs_newer_postgresql(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    for form, need in _forms_needing(stmt.node):
        if ctx.pg_major < need:
            yield ctx.finding(stmt, "needs-newer-postgresql",
                              f"{form} needs PostgreSQL {need} or later; the server is PostgreSQL {ctx.pg_major}, "
                              "where this statement fails and the migration with it",
                              f"-- upgrade the server to PostgreSQL >= {need} first, or write the change in a form "
                              f"PostgreSQL {ctx.pg_major} has (docs/database-rules.md lists each form's version)")
