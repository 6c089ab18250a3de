"""Adding and changing columns: the statements that look instant but rewrite the whole table
under ACCESS EXCLUSIVE (every query on it waits until the copy is done)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.stream import RawStream

from shipyard.database.findings import Finding
from shipyard.database.locks import ACCESS_EXCLUSIVE
from shipyard.database.rules.base import (
    Context,
    RuleInfo,
    alter_commands,
    altered_table,
    backfill,
    check,
    ident,
    rows_note,
    table_name,
)
from shipyard.database.rules.schema import ATT, CON
from shipyard.database.rules.types import ColumnType, rewrite_free, timezone_dependent, widening_source
from shipyard.database.rules.volatility import classify, is_null_constant
from shipyard.database.statements import Statement

UTC_ZONES = frozenset({"utc", "etc/utc", "gmt", "etc/gmt", "uct", "etc/uct", "universal", "etc/universal",
                       "zulu", "etc/zulu", "z"})


def _sql(node: Any) -> str:
    return RawStream()(node)


def added_columns(stmt: Statement, ctx: Context) -> Iterator[tuple[str, Any]]:
    """(table as written, ColumnDef) for each ADD COLUMN on a table that existed before the scripts."""
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    for cmd in alter_commands(stmt, ATT.AT_AddColumn):
        if isinstance(cmd.def_, ast.ColumnDef):
            yield table_name(rv), cmd.def_


def _constraint(col: Any, *kinds: Any) -> Any:
    return next((c for c in col.constraints or () if isinstance(c, ast.Constraint) and c.contype in kinds), None)


def _default(col: Any) -> Any:
    """The DEFAULT expression, None when there is none (or it is NULL)."""
    con = _constraint(col, CON.CONSTR_DEFAULT)
    expr = con.raw_expr if con is not None else col.raw_default
    return None if expr is None or is_null_constant(expr) else expr


def _type_sql(col: Any) -> str:
    ctype = ColumnType.from_type_name(col.typeName)
    if ctype is not None and ctype.serial:
        return {"int2": "smallint", "int4": "integer", "int8": "bigint"}[ctype.name]
    return _sql(col.typeName)


def _stored_generated(col: Any) -> Any:
    con = _constraint(col, CON.CONSTR_GENERATED)
    return con if con is not None and con.generated_kind == "s" else None


def _identity(col: Any) -> bool:
    ctype = ColumnType.from_type_name(col.typeName)
    return _constraint(col, CON.CONSTR_IDENTITY) is not None or bool(ctype and ctype.serial)


def _plain_add_then_backfill(table: str, col: Any, value: str) -> str:
    name = ident(col.colname)
    fix = (f"ALTER TABLE {table} ADD COLUMN {name} {_type_sql(col)};\n"
           f"ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT {value};   -- rows inserted from now on\n"
           + backfill(table, name, value))
    if col.is_not_null or _constraint(col, CON.CONSTR_NOTNULL) is not None:
        fix += "\n-- then make it NOT NULL without a long lock (see set-not-null)"
    return fix


@check(
    RuleInfo("add-column-volatile-default", "ADD COLUMN with a volatile DEFAULT (random(), clock_timestamp(), "
             "gen_random_uuid(), nextval(), ...) rewrites the table", ACCESS_EXCLUSIVE, "rewrite"),
    RuleInfo("add-column-default-rewrite", "ADD COLUMN with any DEFAULT rewrites the table before PostgreSQL 11",
             ACCESS_EXCLUSIVE, "rewrite"),
)
def add_column_default(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    for table, col in added_columns(stmt, ctx):
        expr = _default(col)
        if expr is None or _identity(col) or _stored_generated(col) is not None:
            continue
        value = _sql(expr)
        kind, culprits = classify(expr, ctx.schema.volatility)
        where = f"column {ident(col.colname)} to {table}{rows_note(ctx, ctx.key(altered_table(stmt)))}"
        fix = _plain_add_then_backfill(table, col, value)
        if kind == "volatile":
            yield ctx.finding(stmt, "add-column-volatile-default",
                              f"adding {where} with the volatile default {value} computes it for every existing row: "
                              "a full table rewrite under ACCESS EXCLUSIVE", fix, table=table)
        elif ctx.pg_major < 11:
            yield ctx.finding(stmt, "add-column-default-rewrite",
                              f"adding {where} with DEFAULT {value} rewrites the whole table under ACCESS EXCLUSIVE "
                              f"on PostgreSQL {ctx.pg_major} (only 11 and later store the default without a rewrite)",
                              fix, table=table)
        elif kind == "unknown":
            yield ctx.finding(stmt, "add-column-volatile-default",
                              f"adding {where} with DEFAULT {value} rewrites the table unless "
                              f"{', '.join(culprits)} is STABLE or IMMUTABLE (not known without a database)",
                              fix + "\n-- or, if the function is STABLE or IMMUTABLE, keep the statement and "
                              "ignore this finding", table=table, severity="warning")


@check(RuleInfo("add-column-stored-generated", "ADD COLUMN ... GENERATED ALWAYS AS (...) STORED rewrites the table",
                ACCESS_EXCLUSIVE, "rewrite"))
def add_column_stored_generated(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    for table, col in added_columns(stmt, ctx):
        gen = _stored_generated(col)
        if gen is None:
            continue
        name, expr = ident(col.colname), _sql(gen.raw_expr)
        fix = (f"ALTER TABLE {table} ADD COLUMN {name} {_type_sql(col)};\n"
               f"-- keep it current with a BEFORE INSERT OR UPDATE trigger that sets NEW.{name} := {expr}\n"
               + backfill(table, name, expr))
        if ctx.pg_major >= 18:
            fix = (f"ALTER TABLE {table} ADD COLUMN {name} {_type_sql(col)} GENERATED ALWAYS AS ({expr}) VIRTUAL;"
                   f"   -- computed on read, no rewrite (PostgreSQL >= 18)\n-- or, to store it:\n" + fix)
        yield ctx.finding(stmt, "add-column-stored-generated",
                          f"adding the stored generated column {name} computes {expr} for every row of {table}: "
                          "a full table rewrite under ACCESS EXCLUSIVE", fix, table=table)


@check(RuleInfo("add-column-identity", "ADD COLUMN with GENERATED ... AS IDENTITY or a serial type rewrites the "
                "table to number the existing rows", ACCESS_EXCLUSIVE, "rewrite"))
def add_column_identity(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    for table, col in added_columns(stmt, ctx):
        if not _identity(col):
            continue
        name = ident(col.colname)
        seq = ident(f"{altered_table(stmt).relname}_{col.colname}_seq")
        fix = (f"CREATE SEQUENCE {seq};\n"
               f"ALTER TABLE {table} ADD COLUMN {name} {_type_sql(col)};\n"
               f"ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT nextval('{seq}');\n"
               f"ALTER SEQUENCE {seq} OWNED BY {table}.{name};\n"
               + backfill(table, name, f"nextval('{seq}')"))
        yield ctx.finding(stmt, "add-column-identity",
                          f"adding {name} as an identity/serial column fills it from a sequence for every existing "
                          f"row of {table}: a full table rewrite under ACCESS EXCLUSIVE", fix, table=table)


@check(RuleInfo("add-column-not-null-no-default", "ADD COLUMN ... NOT NULL without a DEFAULT fails on a table with "
                "rows, and the running release's INSERTs do not set the column", ACCESS_EXCLUSIVE, "scan",
                breaks_old_release=True))
def add_column_not_null_no_default(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    for table, col in added_columns(stmt, ctx):
        not_null = col.is_not_null or _constraint(col, CON.CONSTR_NOTNULL, CON.CONSTR_PRIMARY) is not None
        if not not_null or _default(col) is not None or _identity(col) or _stored_generated(col) is not None:
            continue
        name = ident(col.colname)
        fix = f"ALTER TABLE {table} ADD COLUMN {name} {_type_sql(col)} NOT NULL DEFAULT <a constant>;"
        if ctx.pg_major < 11:
            fix = (f"ALTER TABLE {table} ADD COLUMN {name} {_type_sql(col)};\n"
                   f"ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT <a constant>;\n"
                   + backfill(table, name, "<a constant>")
                   + "\n-- then make it NOT NULL without a long lock (see set-not-null)")
        yield ctx.finding(stmt, "add-column-not-null-no-default",
                          f"adding NOT NULL column {name} without a default fails if {table} has any row, and the "
                          f"release running now inserts rows without {name}", fix, table=table)


@check(RuleInfo("alter-column-type", "ALTER COLUMN ... TYPE rewrites the table unless the change is "
                "binary-coercible (e.g. varchar(n) -> varchar(m >= n) or text)", ACCESS_EXCLUSIVE, "rewrite"))
def alter_column_type(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    key, table = ctx.key(rv), table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_AlterColumnType):
        new = ColumnType.from_type_name(cmd.def_.typeName) if isinstance(cmd.def_, ast.ColumnDef) else None
        if new is None:
            continue
        name = ident(cmd.name)
        col = ctx.schema.column(key, cmd.name)
        old = col.type if col else None
        using = cmd.def_.raw_default
        fix = _type_change_fix(table, rv.relname, cmd.name, old, new, ctx)
        where = f"{table}.{name}{rows_note(ctx, key)}"
        if ctx.schema.empty(key):
            continue                    # a rewrite of no row: milliseconds, whatever the types
        if not _plain_using(using, cmd.name, new):
            yield ctx.finding(stmt, "alter-column-type", f"changing the type of {where} with USING {_sql(using)} "
                              "computes every row anew: a full table rewrite under ACCESS EXCLUSIVE", fix, table=table)
        elif old is None:
            source = widening_source(new)
            if source:
                yield ctx.finding(stmt, "alter-column-type",
                                  f"changing {where} to {new} is rewrite-free only from {source}; the old type is "
                                  "unknown without a database (any other type means a full rewrite)", fix,
                                  table=table, severity="warning")
            else:
                yield ctx.finding(stmt, "alter-column-type",
                                  f"changing {where} to {new} rewrites the table under ACCESS EXCLUSIVE (the old "
                                  "type is unknown without a database; only binary-coercible changes avoid it)",
                                  fix, table=table)
        elif rewrite_free(old, new):
            continue
        elif timezone_dependent(old, new) and ctx.pg_major >= 12 \
                and ctx.settings.get("timezone", "").lower() in UTC_ZONES:
            indexes = ctx.schema.indexes_on(key, cmd.name)
            if indexes:
                yield ctx.finding(stmt, "alter-column-type",
                                  f"changing {where} from {old} to {new} under TimeZone UTC keeps the table's rows, "
                                  f"but rebuilds {', '.join(ident(i) for i in indexes)} under ACCESS EXCLUSIVE "
                                  "(the new type's operator class differs): every query waits for the index build",
                                  _rebuilt_index_fix(table, cmd.name, new,
                                                     {i: ctx.schema.index_def(key, i) for i in indexes}),
                                  table=table, effect="scan")
        else:
            yield ctx.finding(stmt, "alter-column-type",
                              f"changing {where} from {old} to {new} rewrites every row under ACCESS EXCLUSIVE",
                              fix, table=table)


def _plain_using(using: Any, column: str, new: ColumnType) -> bool:
    """No USING, the column itself, or the column cast to the new type (col::new, CAST(col AS new)):
    all are the implicit conversion, which PostgreSQL skips when it is binary-coercible."""
    if isinstance(using, ast.TypeCast):
        if ColumnType.from_type_name(using.typeName) != new:
            return False
        using = using.arg
    return using is None or (isinstance(using, ast.ColumnRef) and isinstance(using.fields[-1], ast.String)
                             and using.fields[-1].sval == column)


def _concurrently(definition: str | None, index: str, table: str) -> str:
    if definition is None:
        return f"CREATE INDEX CONCURRENTLY {ident(index)} ON {table} (<its columns>);"
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ", definition) + ";"


def _rebuilt_index_fix(table: str, column: str, new: ColumnType, indexes: dict[str, str | None]) -> str:
    plain = {i: d for i, d in indexes.items() if d is not None}
    held = [i for i, d in indexes.items() if d is None]
    names = ", ".join(ident(i) for i in plain)
    fix = ""
    if plain:
        fix = (f"-- the type change itself is catalog-only under UTC; build {names} without the lock,\n"
               "-- each CONCURRENTLY statement in a file of its own (no transaction):\n"
               + "".join(f"DROP INDEX CONCURRENTLY {ident(i)};\n" for i in plain)
               + f"SET LOCAL TimeZone = 'UTC';\nALTER TABLE {table} ALTER COLUMN {ident(column)} TYPE {new};\n"
               + "".join(_concurrently(d, i, table) + "\n" for i, d in plain.items())
               + "-- (queries that need the index run without it in between)\n")
    if held:
        fix += (f"-- {', '.join(ident(i) for i in held)} backs a constraint (or is not known): DROP INDEX cannot "
                "take it away first; rehearse the change (`shipyard db check`) to see how long the rebuild holds "
                "the lock, or move to a new column (expand/contract)\n")
    return fix + ("-- a new column kept in sync and indexed CONCURRENTLY avoids the lock altogether")


def _type_change_fix(table: str, relname: str, column: str, old: ColumnType | None, new: ColumnType,
                     ctx: Context) -> str:
    name = ident(column)
    if old is not None and timezone_dependent(old, new) and ctx.pg_major >= 12:
        return (f"SET LOCAL TimeZone = 'UTC';   -- in the same transaction: PostgreSQL >= 12 then skips the rewrite\n"
                f"ALTER TABLE {table} ALTER COLUMN {name} TYPE {new};")
    if new.name == "varchar" and new.mods and (old is None or old.name == "text" or
                                              (old.name == "varchar" and (not old.mods or old.mods[0] > new.mods[0]))):
        check_name = ident(f"{relname}_{column}_length")
        return (f"-- enforce the limit with a constraint instead of the type (no rewrite, validated without "
                f"blocking writes):\nALTER TABLE {table} ADD CONSTRAINT {check_name} "
                f"CHECK (char_length({name}) <= {new.mods[0]}) NOT VALID;\n"
                f"-- in a later transaction:\nALTER TABLE {table} VALIDATE CONSTRAINT {check_name};")
    new_col = ident(f"{column}_new")
    return (f"-- expand: a new column, written by the new release (or a trigger) alongside {name}:\n"
            f"ALTER TABLE {table} ADD COLUMN {new_col} {new};\n"
            + backfill(table, new_col, f"{name}::{new}", also=f"{name} IS NOT NULL")
            + f"\n-- contract, once no release reads {name}: drop it and rename {new_col} (-- shipyard:contract)")


@check(RuleInfo("drop-default-not-null", "ALTER COLUMN ... DROP DEFAULT on a NOT NULL column: the running "
                "release's INSERTs that leave the column out start failing", ACCESS_EXCLUSIVE, "none",
                breaks_old_release=True))
def drop_default_not_null(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    key, table = ctx.key(rv), table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_ColumnDefault):
        if cmd.def_ is not None and not is_null_constant(cmd.def_):
            continue                                    # SET DEFAULT <value>: nothing is taken away
        col = ctx.schema.column(key, cmd.name)
        if col is not None and not col.not_null:
            continue
        name = ident(cmd.name)
        fix = (f"-- first a release that always sets {name} in its INSERTs, then\n"
               f"{CONTRACT_STEP}:\nALTER TABLE {table} ALTER COLUMN {name} DROP DEFAULT;")
        if col is None:
            yield ctx.finding(stmt, "drop-default-not-null",
                              f"dropping the default of {table}.{name}: if the column is NOT NULL (not known without "
                              f"a database), every INSERT of the running release that leaves {name} out fails",
                              fix, table=table, severity="warning")
        else:
            yield ctx.finding(stmt, "drop-default-not-null",
                              f"{table}.{name} is NOT NULL: once its default is gone, every INSERT of the running "
                              f"release that leaves {name} out fails with a not-null violation", fix, table=table,
                              severity="warning" if ctx.contract else None)


CONTRACT_STEP = ("-- contract step: a migration marked `-- shipyard:contract`, applied only after no instance of the "
                 "old release runs")
