"""Which table locks a statement asks for, and whether it waits for them with a timeout.

A DDL statement that waits for its lock (behind one long SELECT, say) sits in the lock queue
with its strong mode, and every later query on the table queues behind it: a one-millisecond
ALTER becomes an outage. `lock_timeout` turns that wait into an error the runner can retry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import ast, enums

from shipyard.database.findings import Finding
from shipyard.database.locks import (
    ACCESS_EXCLUSIVE,
    blocks_reads,
    blocks_writes,
    from_lock_statement,
    strongest,
)
from shipyard.database.rules.base import Context, RuleInfo, check, table_name
from shipyard.database.rules.catalog import ALTER_TABLE, STATEMENTS
from shipyard.database.rules.schema import ATT, CON, TableKey, qualified
from shipyard.database.statements import Statement

OBJ = enums.ObjectType
_LIGHT_RELOPTIONS = re.compile(r"^(fillfactor|parallel_workers|autovacuum_.*|toast_tuple_target)$")


@dataclass(frozen=True)
class TableLock:
    table: TableKey | None
    """None: a table the linter cannot name (DROP INDEX of an unknown index, VACUUM FULL of all)."""
    written: str | None
    mode: str


@dataclass(frozen=True)
class _Resolved:
    """A table the statement does not name itself (an index's table), already resolved."""
    key: TableKey | None


def command_variant(cmd: Any) -> str | None:
    """Which variant of its DDL-table row an ALTER TABLE sub-command is (None: the plain form)."""
    sub = cmd.subtype
    if sub in (ATT.AT_SetRelOptions, ATT.AT_ResetRelOptions) and all(
            _LIGHT_RELOPTIONS.match(d.defname) or d.defnamespace == "toast" for d in cmd.def_ or ()):
        return "light"
    if sub == ATT.AT_DetachPartition and getattr(cmd.def_, "concurrent", False):
        return "concurrent"
    if sub == ATT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) and cmd.def_.contype == CON.CONSTR_FOREIGN:
        return "foreign"
    return None


def _command_locks(cmd: Any, ctx: Context) -> Iterator[tuple[Any, str]]:
    """(referenced table or None for the altered table itself, mode) for one ALTER TABLE sub-command,
    the modes as the DDL table gives them for the server's version."""
    sub = cmd.subtype
    entry = ALTER_TABLE.get(sub)
    if entry is None or entry.lock is None:
        yield None, ACCESS_EXCLUSIVE          # what PostgreSQL takes for anything it does not lower
        return
    variant = command_variant(cmd)
    yield None, entry.lock_for(ctx.pg_major, variant)
    if variant == "foreign":
        yield cmd.def_.pktable, entry.lock_for(ctx.pg_major, variant)
    if sub == ATT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        for con in cmd.def_.constraints or ():
            if isinstance(con, ast.Constraint) and con.contype == CON.CONSTR_FOREIGN:
                yield con.pktable, entry.lock_for(ctx.pg_major, "references")


def _mode(node: Any, ctx: Context, variant: str | None = None) -> str:
    mode = STATEMENTS[type(node)].lock_for(ctx.pg_major, variant)
    assert mode is not None, type(node).__name__
    return mode


def _relations_locked(stmt: Statement, ctx: Context) -> Iterator[tuple[Any, str]]:
    """(RangeVar, (schema or None, name) or _Resolved, mode) as PostgreSQL takes them for the statement."""
    node = stmt.node
    if isinstance(node, ast.AlterTableStmt) and node.objtype == OBJ.OBJECT_TABLE:
        for cmd in node.cmds or ():
            if isinstance(cmd, ast.AlterTableCmd):
                for other, mode in _command_locks(cmd, ctx):
                    yield other if other is not None else node.relation, mode
    elif isinstance(node, ast.RenameStmt) and node.relation is not None and (
            node.renameType == OBJ.OBJECT_TABLE or node.relationType == OBJ.OBJECT_TABLE):
        yield node.relation, _mode(node, ctx)
    elif isinstance(node, ast.IndexStmt):
        yield node.relation, _mode(node, ctx, "concurrent" if node.concurrent else None)
    elif isinstance(node, ast.DropStmt) and node.removeType == OBJ.OBJECT_TABLE:
        for names in node.objects or ():
            yield qualified(names), _mode(node, ctx)
    elif isinstance(node, ast.DropStmt) and node.removeType == OBJ.OBJECT_INDEX:
        for names in node.objects or ():
            table = ctx.schema.index_table(ctx.schema.resolve_index(*qualified(names)))
            yield _Resolved(table), _mode(node, ctx, "index_concurrent" if node.concurrent else None)
    elif isinstance(node, ast.TruncateStmt):
        for rv in node.relations or ():
            yield rv, _mode(node, ctx)
    elif isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd and any(
            getattr(o, "defname", "") == "full" for o in node.options or ()):
        rels = [r.relation for r in node.rels or () if getattr(r, "relation", None) is not None]
        for rv in rels or [_Resolved(None)]:
            yield rv, _mode(node, ctx, "full")
    elif isinstance(node, ast.ClusterStmt):
        yield (node.relation if node.relation is not None else _Resolved(None)), _mode(node, ctx)
    elif isinstance(node, ast.ReindexStmt) and node.relation is not None and not any(
            getattr(p, "defname", "") == "concurrently" for p in node.params or ()):
        if node.kind == enums.ReindexObjectType.REINDEX_OBJECT_TABLE:
            yield node.relation, _mode(node, ctx)
        elif node.kind == enums.ReindexObjectType.REINDEX_OBJECT_INDEX:
            rv = node.relation
            yield _Resolved(ctx.schema.index_table(ctx.schema.resolve_index(rv.schemaname, rv.relname))), \
                _mode(node, ctx)
    elif isinstance(node, (ast.CreateTrigStmt, ast.RuleStmt)):
        yield node.relation, _mode(node, ctx)
    elif isinstance(node, (ast.CreatePolicyStmt, ast.AlterPolicyStmt)):
        yield node.table, _mode(node, ctx)
    elif isinstance(node, ast.LockStmt):
        for rv in node.relations or ():
            yield rv, from_lock_statement(node.mode)
    elif isinstance(node, ast.CreateStmt):
        if node.partbound is not None and node.inhRelations:
            yield node.inhRelations[0], _mode(node, ctx, "partition_of")
        for elt in node.tableElts or ():
            cons = elt.constraints or () if isinstance(elt, ast.ColumnDef) else [elt]
            for con in cons:
                if isinstance(con, ast.Constraint) and con.contype == CON.CONSTR_FOREIGN:
                    yield con.pktable, _mode(node, ctx, "references")


def table_locks(stmt: Statement, ctx: Context) -> list[TableLock]:
    """The table locks the statement takes, strongest per table, in the order it names them."""
    found: dict[TableKey | None, TableLock] = {}
    for rel, mode in _relations_locked(stmt, ctx):
        if isinstance(rel, _Resolved):
            key, written = rel.key, table_name(rel.key) if rel.key else None
        else:
            key, written = ctx.key(rel), table_name(rel)
        prev = found.get(key)
        if prev is None or strongest([prev.mode, mode]) == mode:
            found[key] = TableLock(key, written, mode)
    return list(found.values())


def lock_timeout_set(settings: dict[str, str]) -> bool:
    """A non-zero lock_timeout is in effect ('0', '0ms', ... and DEFAULT mean none)."""
    value = settings.get("lock_timeout", "").strip().lower()
    return bool(value) and not re.fullmatch(r"0*(\.0*)?\s*(us|ms|s|min|h|d)?", value)


@check(RuleInfo("missing-lock-timeout", "a statement that takes a lock blocking reads or writes of an existing "
                "table runs without a lock_timeout", "varies", "none"))
def missing_lock_timeout(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    if ctx.assume_lock_timeout or lock_timeout_set(ctx.settings):
        return
    risky = [lock for lock in table_locks(stmt, ctx)
             if (lock.table is None or not ctx.schema.is_new(lock.table))
             and (blocks_reads(lock.mode) or blocks_writes(lock.mode))]
    if not risky:
        return
    worst = max(risky, key=lambda lock: (blocks_reads(lock.mode), blocks_writes(lock.mode)))
    on = worst.written or "its table"
    blocked = "every query" if blocks_reads(worst.mode) else "every write"
    set_it = "SET LOCAL lock_timeout = '2s';" if stmt.in_transaction else "SET lock_timeout = '2s';"
    yield ctx.finding(stmt, "missing-lock-timeout",
                      f"waits for {worst.mode} on {on} without a lock_timeout: while it waits behind a running "
                      f"transaction, {blocked} on {on} queues behind it",
                      f"-- at the top of the migration; if it times out, nothing waited long: retry later\n"
                      f"{set_it}", table=worst.written, lock=worst.mode)


class Settings:
    """Run-time settings the scripts change (lock_timeout, TimeZone), as each statement sees them:
    SET lasts for the rest of the script's session, SET LOCAL until its transaction ends."""

    def __init__(self) -> None:
        self.session: dict[str, str] = {}
        self.local: dict[str, str] = {}
        self.local_tx: int | None = None

    def current(self, tx: int) -> dict[str, str]:
        merged = dict(self.session)
        if self.local_tx == tx:
            merged.update(self.local)
        return {k: v for k, v in merged.items() if v}

    def observe(self, stmt: Statement, tx: int) -> None:
        node = stmt.node
        if isinstance(node, ast.VariableSetStmt):
            if node.kind == enums.VariableSetKind.VAR_RESET_ALL:
                self.session.clear()
                self.local.clear()
            elif node.name:
                value = _value(node.args) if node.kind == enums.VariableSetKind.VAR_SET_VALUE else ""
                self._set(node.name.lower(), value, bool(node.is_local), stmt.in_transaction, tx)
        elif isinstance(node, ast.SelectStmt):
            for target in node.targetList or ():
                call = getattr(target, "val", None)
                if isinstance(call, ast.FuncCall) and call.funcname[-1].sval == "set_config" \
                        and len(call.args or ()) == 3:
                    name, value, local = (_const(a) for a in call.args)
                    if name is not None and value is not None:
                        self._set(name.lower(), value, local in ("true", "t", "on", "1"), stmt.in_transaction, tx)

    def _set(self, name: str, value: str, local: bool, in_transaction: bool, tx: int) -> None:
        if local:
            if not in_transaction:
                return               # PostgreSQL ignores SET LOCAL outside a transaction block
            if self.local_tx != tx:
                self.local, self.local_tx = {}, tx
            self.local[name] = value
        else:
            self.session[name] = value
            if self.local_tx == tx:
                self.local.pop(name, None)


def _const(node: Any) -> str | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    val = node.val
    for attr in ("sval", "ival", "fval", "boolval"):
        if hasattr(val, attr):
            return str(getattr(val, attr)).lower() if attr == "boolval" else str(getattr(val, attr))
    return None


def _value(args: Any) -> str:
    values = [_const(a) for a in args or ()]
    return " ".join(v for v in values if v is not None)
