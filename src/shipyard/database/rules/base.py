"""The shape every rule shares: its description (RuleInfo), the context it reads, and the
registry that `lint_scripts` runs. A rule is a pure function (Statement, Context) -> findings;
everything it may know about what came before is in the Context."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pglast import ast, enums
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from shipyard.database.findings import Effect, Finding, Severity
from shipyard.database.rules.schema import SchemaModel, TableKey
from shipyard.database.statements import Statement

_KEEP = object()


@dataclass(frozen=True)
class RuleInfo:
    id: str
    summary: str
    """One line, for `--rules` and the docs."""
    lock: str | None
    """The table lock the statements it flags take ('varies' when it depends on the statement)."""
    effect: Effect
    breaks_old_release: bool = False
    severity: Severity = "error"


@dataclass(frozen=True)
class Context:
    """What a rule may know besides the statement itself."""

    pg_major: int
    schema: SchemaModel
    source: str
    tx: int
    """The transaction the statement runs in; equal ids mean the same transaction."""
    settings: dict[str, str]
    """Settings in effect for the statement (lock_timeout, timezone, ...), as the scripts set them."""
    contract: bool = False
    """The script is marked `-- shipyard:contract`: breaking the old release is its purpose."""
    assume_lock_timeout: bool = False

    def existing(self, rv: Any) -> bool:
        """The table was there before the scripts, so the running release uses it."""
        return not self.schema.is_new(self.schema.resolve(rv))

    def key(self, rv: Any) -> TableKey:
        return self.schema.resolve(rv)

    def finding(self, stmt: Statement, rule: str, message: str, fix: str, *, table: str | None = None,
                lock: Any = _KEEP, effect: Any = _KEEP, severity: Severity | None = None,
                breaks_old_release: bool | None = None) -> Finding:
        info = RULES[rule]
        return Finding(rule=rule, severity=severity or info.severity, source=self.source, line=stmt.line,
                       statement=stmt.first_line, message=message, fix=fix,
                       lock=info.lock if lock is _KEEP else lock, table=table,
                       effect=info.effect if effect is _KEEP else effect,
                       breaks_old_release=info.breaks_old_release if breaks_old_release is None
                       else breaks_old_release)


Check = Callable[[Statement, Context], Iterable[Finding]]
RULES: dict[str, RuleInfo] = {
    "unknown-ignore": RuleInfo("unknown-ignore", "a `-- shipyard:ignore` comment names a rule id that does not "
                               "exist, so it silences nothing", None, "none", severity="warning"),
}
CHECKS: list[Check] = []


def check(*infos: RuleInfo) -> Callable[[Check], Check]:
    """Registers a rule function and the rule ids it may report."""
    def register(fn: Check) -> Check:
        for info in infos:
            if info.id in RULES:
                raise ValueError(f"rule id registered twice: {info.id}")
            RULES[info.id] = info
        CHECKS.append(fn)
        return fn
    return register


_KEYWORDS = frozenset(RESERVED_KEYWORDS) | frozenset(COL_NAME_KEYWORDS) | frozenset(TYPE_FUNC_NAME_KEYWORDS)


def ident(name: str) -> str:
    """An identifier as it must be written in SQL."""
    if name.isidentifier() and name == name.lower() and name.isascii() and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def table_name(rv: Any) -> str:
    """A table as the statement wrote it (schema-qualified only when it was)."""
    if isinstance(rv, ast.RangeVar):
        return ".".join(ident(p) for p in (rv.schemaname, rv.relname) if p)
    schema, name = rv
    return ".".join(ident(p) for p in (schema, name) if p)


def altered_table(stmt: Statement) -> Any:
    """The RangeVar of an ALTER TABLE (not ALTER INDEX / VIEW / ...), else None."""
    node = stmt.node
    if isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
        return node.relation
    return None


def alter_commands(stmt: Statement, *subtypes: Any) -> list[Any]:
    """The ALTER TABLE's sub-commands of the given kinds."""
    if altered_table(stmt) is None:
        return []
    return [c for c in stmt.node.cmds or () if isinstance(c, ast.AlterTableCmd) and c.subtype in subtypes]


def rows_note(ctx: Context, key: TableKey) -> str:
    rows = ctx.schema.rows(key)
    return f" (about {rows:,} rows)" if rows and rows > 0 else ""


BATCH = 5000


def backfill(table: str, column: str, value: str, also: str | None = None) -> str:
    """A batched UPDATE that the application can keep up with, one short transaction per batch."""
    condition = f"{column} IS NULL" + (f" AND {also}" if also else "")
    return (f"-- repeat until it updates 0 rows, each batch in its own transaction:\n"
            f"UPDATE {table} SET {column} = {value}\n"
            f"  WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT {BATCH}));")
