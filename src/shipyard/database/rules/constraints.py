"""Constraints that PostgreSQL proves by reading every row. Added NOT VALID they apply to new
rows at once; VALIDATE CONSTRAINT later proves the old rows under a lock that lets the
application keep reading and writing, as long as it runs in its own transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.stream import RawStream

from shipyard.database.findings import Finding
from shipyard.database.locks import ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE
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
from shipyard.database.rules.schema import ATT, CON
from shipyard.database.rules.volatility import is_null_constant
from shipyard.database.statements import Statement

LATER = "-- in a later transaction (the next migration file):\n"


def _validate_later(table: str, name: str) -> str:
    return f"{LATER}ALTER TABLE {table} VALIDATE CONSTRAINT {name};"


def _has_default(col: Any) -> bool:
    return any(isinstance(c, ast.Constraint) and c.contype == CON.CONSTR_DEFAULT and not is_null_constant(c.raw_expr)
               for c in col.constraints or ())


@check(RuleInfo("add-foreign-key-validating", "ADD FOREIGN KEY without NOT VALID checks every row while holding "
                "SHARE ROW EXCLUSIVE on both tables", SHARE_ROW_EXCLUSIVE, "scan"))
def add_foreign_key(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    table = table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_AddConstraint, ATT.AT_AddColumn):
        if cmd.subtype == ATT.AT_AddConstraint:
            con = cmd.def_
            if not isinstance(con, ast.Constraint) or con.contype != CON.CONSTR_FOREIGN or con.skip_validation:
                continue
            columns = [a.sval for a in con.fk_attrs or ()]
            lock, prefix = SHARE_ROW_EXCLUSIVE, ""
        else:
            col = cmd.def_
            con = next((c for c in col.constraints or ()
                        if isinstance(c, ast.Constraint) and c.contype == CON.CONSTR_FOREIGN), None)
            if con is None or not _has_default(col):
                continue          # a new column without a default is all NULL: nothing to check, no scan
            columns = [col.colname]
            lock = ACCESS_EXCLUSIVE
            prefix = f"-- add {ident(col.colname)} without REFERENCES, then:\n"
        name = ident(con.conname or f"{rv.relname}_{'_'.join(columns)}_fkey")
        refs = table_name(con.pktable)
        target = refs + (f" ({', '.join(ident(a.sval) for a in con.pk_attrs)})" if con.pk_attrs else "")
        fix = (prefix + f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({', '.join(map(ident, columns))}) "
               f"REFERENCES {target} NOT VALID;\n" + _validate_later(table, name))
        yield ctx.finding(stmt, "add-foreign-key-validating",
                          f"adding foreign key {name} checks every row of {table}{rows_note(ctx, ctx.key(rv))} "
                          f"against {refs} while holding locks that block writes to both tables", fix,
                          table=table, lock=lock)


@check(RuleInfo("add-check-validating", "ADD CHECK without NOT VALID scans the table under ACCESS EXCLUSIVE",
                ACCESS_EXCLUSIVE, "scan"))
def add_check(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    table = table_name(rv)
    for cmd in alter_commands(stmt, ATT.AT_AddConstraint):
        con = cmd.def_
        if not isinstance(con, ast.Constraint) or con.contype != CON.CONSTR_CHECK or con.skip_validation:
            continue
        name = ident(con.conname or f"{rv.relname}_check")
        fix = (f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({RawStream()(con.raw_expr)}) NOT VALID;\n"
               + _validate_later(table, name))
        yield ctx.finding(stmt, "add-check-validating",
                          f"adding CHECK constraint {name} reads every row of {table}{rows_note(ctx, ctx.key(rv))} "
                          "while holding ACCESS EXCLUSIVE: every query on it waits", fix, table=table)


@check(RuleInfo("validate-in-same-transaction", "VALIDATE CONSTRAINT in the same transaction as its NOT VALID "
                "add: the add's lock is held during the whole scan", "varies", "scan"))
def validate_in_same_transaction(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    key, table = ctx.key(rv), table_name(rv)
    added_here: dict[str, str] = {}
    for cmd in alter_commands(stmt, ATT.AT_AddConstraint, ATT.AT_ValidateConstraint):
        if cmd.subtype == ATT.AT_AddConstraint:
            con = cmd.def_
            if isinstance(con, ast.Constraint) and con.skip_validation and con.conname:
                added_here[con.conname] = "foreign key" if con.contype == CON.CONSTR_FOREIGN else "check"
            continue
        earlier = ctx.schema.constraint(key, cmd.name)
        kind = added_here.get(cmd.name) or (earlier.kind if earlier and earlier.tx == ctx.tx else None)
        if kind is None:
            continue
        lock = SHARE_ROW_EXCLUSIVE if kind == "foreign key" else ACCESS_EXCLUSIVE
        name = ident(cmd.name)
        yield ctx.finding(stmt, "validate-in-same-transaction",
                          f"{name} was added NOT VALID in this same transaction, so its {lock} lock on {table} is "
                          f"still held while VALIDATE reads every row{rows_note(ctx, key)}",
                          f"-- commit the NOT VALID add first: move this to the next migration file\n"
                          f"ALTER TABLE {table} VALIDATE CONSTRAINT {name};", table=table, lock=lock)


@check(RuleInfo("set-not-null", "SET NOT NULL scans the table under ACCESS EXCLUSIVE unless a validated "
                "CHECK (col IS NOT NULL) proves it first (PostgreSQL >= 12)", ACCESS_EXCLUSIVE, "scan"))
def set_not_null(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    rv = altered_table(stmt)
    if rv is None or not ctx.existing(rv):
        return
    key, table = ctx.key(rv), table_name(rv)
    columns: list[str] = []
    for cmd in alter_commands(stmt, ATT.AT_SetNotNull, ATT.AT_AddConstraint):
        if cmd.subtype == ATT.AT_SetNotNull:
            columns.append(cmd.name)
        elif isinstance(cmd.def_, ast.Constraint) and cmd.def_.contype == CON.CONSTR_NOTNULL \
                and not cmd.def_.skip_validation:
            columns.extend(k.sval for k in cmd.def_.keys or ())
    for column in columns:
        known = ctx.schema.column(key, column)
        if known is not None and known.not_null:
            continue
        if ctx.pg_major >= 12 and ctx.schema.proven_not_null(key, column):
            continue
        yield ctx.finding(stmt, "set-not-null",
                          f"SET NOT NULL on {table}.{ident(column)} reads every row{rows_note(ctx, key)} under "
                          "ACCESS EXCLUSIVE to prove there is no NULL: every query on the table waits",
                          _not_null_fix(table, rv.relname, column, ctx.pg_major), table=table)


def _not_null_fix(table: str, relname: str, column: str, pg_major: int) -> str:
    col, name = ident(column), ident(f"{relname}_{column}_not_null")
    prove = (f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({col} IS NOT NULL) NOT VALID;\n"
             + _validate_later(table, name))
    if pg_major < 12:
        return ("-- PostgreSQL < 12 scans for SET NOT NULL whatever is known; keep a validated CHECK instead:\n"
                + prove)
    fix = (prove + f"\n{LATER}ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL;   -- the check proves it: no scan\n"
           f"ALTER TABLE {table} DROP CONSTRAINT {name};")
    if pg_major >= 18:
        fix += (f"\n-- or, on PostgreSQL >= 18: ALTER TABLE {table} ADD CONSTRAINT {name} NOT NULL {col} NOT VALID; "
                f"then VALIDATE it in a later transaction")
    return fix
