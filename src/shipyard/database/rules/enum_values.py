"""Enum labels added in a migration. ALTER TYPE ... ADD VALUE may run inside a transaction
(PostgreSQL >= 12), but the new label cannot be used until that transaction commits: a
file that adds a label and then writes or compares it fails as a whole."""

from __future__ import annotations

import re
from collections.abc import Iterator

from pglast import ast

from shipyard.database.findings import Finding
from shipyard.database.rules.base import Context, RuleInfo, check
from shipyard.database.statements import Statement


@check(RuleInfo("enum-value-used-in-same-transaction", "a label added by ALTER TYPE ... ADD VALUE is used in the "
                "same transaction: PostgreSQL refuses it (unsafe use of new value), so the migration fails",
                None, "none"))
def enum_value_used(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    if isinstance(stmt.node, ast.AlterEnumStmt):
        return                       # naming it as the neighbour of another new label is not a use
    for label, (type_name, tx) in ctx.schema.enum_values.items():
        if tx != ctx.tx:
            continue
        literal = "'" + label.replace("'", "''") + "'"
        if not re.search(re.escape(literal), stmt.sql):
            continue
        yield ctx.finding(stmt, "enum-value-used-in-same-transaction",
                          f"{literal} was added to {type_name} by ALTER TYPE ... ADD VALUE in this transaction, and "
                          "PostgreSQL does not let a new label be used before that transaction commits: the "
                          "migration fails with `unsafe use of new value`",
                          f"-- one migration (or a file marked -- shipyard:no-transaction) for the label:\n"
                          f"ALTER TYPE {type_name} ADD VALUE IF NOT EXISTS {literal};\n"
                          f"-- and the statements that use it in the next migration")
        return
