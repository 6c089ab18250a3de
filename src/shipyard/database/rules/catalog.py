"""The DDL table: for every statement kind pglast can produce and every ALTER TABLE
sub-command, the lock PostgreSQL 12-17 takes, whether it rewrites or scans the table, what the
running release loses, the safe form and the rules that judge it. The linter takes its lock
levels and its notion of "judged" from here, docs/database-rules.md is printed from it
(`python -m shipyard.database.rules.doc`), and the claims test runs every row's example on
PostgreSQL."""

from __future__ import annotations

from typing import Any

from pglast import ast, enums

from shipyard.database.rules.catalog_alter import ALTER_TABLE
from shipyard.database.rules.catalog_entry import NEWEST, OLDEST, Entry, Example
from shipyard.database.rules.catalog_statements import STATEMENTS

__all__ = ["ALTER_TABLE", "INDEX_ALTERS", "NEWEST", "OLDEST", "STATEMENTS", "Entry", "Example", "alter_entry",
           "statement_entry", "unjudged_part"]

INDEX_ALTERS = frozenset({enums.AlterTableType.AT_AttachPartition})
"""ALTER INDEX sub-commands judged (ATTACH PARTITION: the safe way to index a partitioned table)."""


def statement_entry(node: Any) -> Entry | None:
    return STATEMENTS.get(type(node))


def alter_entry(subtype: Any) -> Entry:
    return ALTER_TABLE[subtype]


def unjudged_part(node: Any) -> tuple[str, Entry | None] | None:
    """(what, its row) of the statement that no rule judges; None when all of it is judged."""
    entry = statement_entry(node)
    if entry is None or not entry.judged:
        return type(node).__name__, entry
    if isinstance(node, ast.AlterTableStmt):
        table = node.objtype == enums.ObjectType.OBJECT_TABLE
        for cmd in node.cmds or ():
            if not isinstance(cmd, ast.AlterTableCmd):
                continue
            sub = ALTER_TABLE.get(cmd.subtype)
            if table and (sub is None or not sub.judged):
                return cmd.subtype.name, sub
            if not table and not (node.objtype == enums.ObjectType.OBJECT_INDEX and cmd.subtype in INDEX_ALTERS):
                return f"{node.objtype.name} {cmd.subtype.name}", None
    return None
