"""Statements that take something away from the release running now: a rename or a drop is
instant for PostgreSQL, but the old code still names the old table or column. They belong
in contract migrations, applied once no instance of the old release is left."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast, enums

from shipyard.database.findings import Finding, Severity
from shipyard.database.locks import ACCESS_EXCLUSIVE
from shipyard.database.rules.base import (
    Context,
    RuleInfo,
    alter_commands,
    altered_table,
    backfill,
    check,
    ident,
    table_name,
)
from shipyard.database.rules.schema import ATT, qualified
from shipyard.database.statements import Statement

CONTRACT = ("-- contract step: put it in a migration marked `-- shipyard:contract`, which shipyard applies only "
            "after no instance of the old release runs")


def _severity(ctx: Context) -> Severity:
    """In a contract migration breaking the old release is the point: worth a look, not a stop."""
    return "warning" if ctx.contract else "error"


def rename_column_steps(table: str, relname: str, old_name: str, new_name: str, type_sql: str | None = None) -> str:
    """A column rename both releases survive (the expand/contract form pgroll and Reshape automate):
    a second column kept equal to the first by a trigger, whichever release writes."""
    old, new = ident(old_name), ident(new_name)
    sync = ident(f"{relname}_{old_name}_{new_name}_sync")
    return (f"-- 1. expand (applied before the new release starts): the new column, kept equal to {old} by a "
            f"trigger\n--    whichever release writes, then filled for the existing rows:\n"
            f"ALTER TABLE {table} ADD COLUMN {new} {type_sql or f'<type of {old}>'};\n"
            f"CREATE FUNCTION {sync}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
            f"  IF TG_OP = 'INSERT' THEN\n"
            f"    NEW.{new} := coalesce(NEW.{new}, NEW.{old}); NEW.{old} := coalesce(NEW.{old}, NEW.{new});\n"
            f"  ELSIF NEW.{old} IS DISTINCT FROM OLD.{old} THEN NEW.{new} := NEW.{old};\n"
            f"  ELSIF NEW.{new} IS DISTINCT FROM OLD.{new} THEN NEW.{old} := NEW.{new};\n"
            f"  END IF;\n  RETURN NEW;\nEND $$;\n"
            f"CREATE TRIGGER {sync} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {sync}();\n"
            + backfill(table, new, old, also=f"{old} IS NOT NULL")
            + f"\n-- 2. deploy the release that reads and writes {new} (the old one keeps using {old})\n"
            f"-- 3. {CONTRACT[3:]}:\n"
            f"DROP TRIGGER {sync} ON {table};\nDROP FUNCTION {sync}();\nALTER TABLE {table} DROP COLUMN {old};")


@check(
    RuleInfo("rename-column", "RENAME COLUMN breaks the release running now (it still uses the old name)",
             ACCESS_EXCLUSIVE, "none", breaks_old_release=True),
    RuleInfo("rename-table", "RENAME TO breaks the release running now (it still uses the old name)",
             ACCESS_EXCLUSIVE, "none", breaks_old_release=True),
)
def rename(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.RenameStmt) or node.relation is None or not ctx.existing(node.relation):
        return
    table = table_name(node.relation)
    if node.renameType == enums.ObjectType.OBJECT_COLUMN and node.relationType == enums.ObjectType.OBJECT_TABLE:
        old, new = ident(node.subname), ident(node.newname)
        col = ctx.schema.column(ctx.key(node.relation), node.subname)
        fix = rename_column_steps(table, node.relation.relname, node.subname, node.newname,
                                  str(col.type) if col is not None and col.type is not None else None)
        yield ctx.finding(stmt, "rename-column",
                          f"renaming {table}.{old} to {new} breaks every query of the running release that "
                          f"names {old}", fix, table=table, severity=_severity(ctx))
    elif node.renameType == enums.ObjectType.OBJECT_TABLE:
        schema = f"{ident(node.relation.schemaname)}." if node.relation.schemaname else ""
        new = schema + ident(node.newname)
        fix = (f"-- keep the old name working as a view while both releases run (a simple view is updatable):\n"
               f"BEGIN;\nALTER TABLE {table} RENAME TO {ident(node.newname)};\n"
               f"CREATE VIEW {table} AS SELECT * FROM {new};\nCOMMIT;\n{CONTRACT}:\nDROP VIEW {table};")
        yield ctx.finding(stmt, "rename-table",
                          f"renaming {table} to {new} breaks every query of the running release that names {table}",
                          fix, table=table, severity=_severity(ctx))


@check(
    RuleInfo("drop-column", "DROP COLUMN breaks the release running now if it still reads or writes the column",
             ACCESS_EXCLUSIVE, "none", breaks_old_release=True),
    RuleInfo("drop-table", "DROP TABLE breaks the release running now if it still uses the table",
             ACCESS_EXCLUSIVE, "none", breaks_old_release=True),
)
def drop(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is not None and ctx.existing(rv):
        table = table_name(rv)
        for cmd in alter_commands(stmt, ATT.AT_DropColumn):
            col = ident(cmd.name)
            yield ctx.finding(stmt, "drop-column",
                              f"dropping {table}.{col} breaks the running release wherever it reads or writes "
                              f"{col} (SELECT *, INSERT with the column, ORM models)",
                              f"-- first release code that no longer uses {col} (ORMs: mark it ignored), then\n"
                              f"{CONTRACT}:\nALTER TABLE {table} DROP COLUMN {col};",
                              table=table, severity=_severity(ctx))
    node = stmt.node
    if isinstance(node, ast.DropStmt) and node.removeType == enums.ObjectType.OBJECT_TABLE:
        for names in node.objects or ():
            key = ctx.key(qualified(names))
            if ctx.schema.is_new(key):
                continue
            table = ".".join(ident(n.sval) for n in names)
            yield ctx.finding(stmt, "drop-table", f"dropping {table} breaks the running release wherever it uses it",
                              f"-- first release code that no longer uses {table}, then\n"
                              f"{CONTRACT}:\nDROP TABLE {table};", table=table, severity=_severity(ctx))


@check(RuleInfo("truncate-cascade", "TRUNCATE ... CASCADE also empties every table that references it, each "
                "under ACCESS EXCLUSIVE", ACCESS_EXCLUSIVE, "none"))
def truncate_cascade(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    node = stmt.node
    if not isinstance(node, ast.TruncateStmt) or node.behavior != enums.DropBehavior.DROP_CASCADE:
        return
    tables = [rv for rv in node.relations or () if ctx.existing(rv)]
    if not tables:
        return
    names = ", ".join(table_name(rv) for rv in tables)
    yield ctx.finding(stmt, "truncate-cascade",
                      f"TRUNCATE {names} CASCADE also empties every table with a foreign key to "
                      f"{'them' if len(tables) > 1 else 'it'}, whichever they are when it runs",
                      f"-- name every table you mean to empty, so nothing else goes with them:\n"
                      f"TRUNCATE {names}, <each referencing table>;", table=table_name(tables[0]))
