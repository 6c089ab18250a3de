"""Which statement kinds and ALTER TABLE sub-commands the linter judges, and what it says of
each. Anything else gets the finding `unknown-statement` ("unknown: not judged"), so a
statement no rule models is never reported as clean."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast, enums

from shipyard.database.findings import Finding
from shipyard.database.rules.base import Context, RuleInfo, check
from shipyard.database.rules.schema import ATT
from shipyard.database.statements import Statement

CATALOG_ONLY = "catalog only: no table lock the running release waits for"
STATEMENTS: dict[type, str] = {
    ast.SelectStmt: "reads (ACCESS SHARE); set_config() of lock_timeout / TimeZone is followed",
    ast.InsertStmt: "ROW EXCLUSIVE; locks only the rows it inserts",
    ast.UpdateStmt: "ROW EXCLUSIVE; whole-table-write without WHERE",
    ast.DeleteStmt: "ROW EXCLUSIVE; whole-table-write without WHERE",
    ast.VariableSetStmt: "lock_timeout and TimeZone are followed for the statements after it",
    ast.TransactionStmt: "transaction boundaries are followed",
    ast.CreateStmt: "a new table no release uses yet; a FOREIGN KEY takes SHARE ROW EXCLUSIVE on the table it "
                    "references (missing-lock-timeout)",
    ast.CreateTableAsStmt: "a new table; reads its source under ACCESS SHARE",
    ast.IndexStmt: "create-index-non-concurrent, concurrent-index-on-partitioned, concurrently-in-transaction",
    ast.DropStmt: "drop-table, drop-index-non-concurrent; other objects: " + CATALOG_ONLY,
    ast.AlterTableStmt: "judged per sub-command (below)",
    ast.RenameStmt: "rename-column, rename-table; other objects: " + CATALOG_ONLY,
    ast.TruncateStmt: "truncate, truncate-cascade",
    ast.VacuumStmt: "vacuum-full; plain VACUUM / ANALYZE take SHARE UPDATE EXCLUSIVE",
    ast.ClusterStmt: "cluster",
    ast.ReindexStmt: "reindex-non-concurrent",
    ast.CreateTrigStmt: "SHARE ROW EXCLUSIVE (missing-lock-timeout)",
    ast.RuleStmt: "ACCESS EXCLUSIVE (missing-lock-timeout)",
    ast.CreatePolicyStmt: "ACCESS EXCLUSIVE (missing-lock-timeout)",
    ast.AlterPolicyStmt: "ACCESS EXCLUSIVE (missing-lock-timeout)",
    ast.LockStmt: "lock-table",
    ast.CreateFunctionStmt: CATALOG_ONLY + "; its volatility is followed",
    ast.ViewStmt: CATALOG_ONLY,
    ast.CreateSeqStmt: CATALOG_ONLY,
    ast.AlterSeqStmt: CATALOG_ONLY,
    ast.CreateEnumStmt: CATALOG_ONLY,
    ast.AlterEnumStmt: "enum-value-used-in-same-transaction",
    ast.CompositeTypeStmt: CATALOG_ONLY,
    ast.CreateDomainStmt: CATALOG_ONLY,
    ast.CreateExtensionStmt: CATALOG_ONLY,
    ast.CommentStmt: CATALOG_ONLY,
    ast.GrantStmt: CATALOG_ONLY,
    ast.CreateSchemaStmt: CATALOG_ONLY,
}
"""Statement kinds the linter judges, with what it says of them."""

_TRIGGERS = (ATT.AT_EnableTrig, ATT.AT_EnableAlwaysTrig, ATT.AT_EnableReplicaTrig, ATT.AT_DisableTrig,
             ATT.AT_EnableTrigAll, ATT.AT_DisableTrigAll, ATT.AT_EnableTrigUser, ATT.AT_DisableTrigUser)
ALTER_TABLE: dict[Any, str] = {
    ATT.AT_AddColumn: "add-column-* rules",
    ATT.AT_ColumnDefault: "SET DEFAULT: catalog only; DROP DEFAULT: drop-default-not-null",
    ATT.AT_DropNotNull: "ACCESS EXCLUSIVE, catalog only",
    ATT.AT_SetNotNull: "set-not-null",
    ATT.AT_SetStatistics: "SHARE UPDATE EXCLUSIVE, catalog only",
    ATT.AT_SetOptions: "SHARE UPDATE EXCLUSIVE, catalog only",
    ATT.AT_ResetOptions: "SHARE UPDATE EXCLUSIVE, catalog only",
    ATT.AT_DropColumn: "drop-column",
    ATT.AT_AddConstraint: "add-foreign-key-validating, add-check-validating, add-unique-without-index",
    ATT.AT_ValidateConstraint: "SHARE UPDATE EXCLUSIVE, scans; validate-in-same-transaction",
    ATT.AT_DropConstraint: "ACCESS EXCLUSIVE, catalog only",
    ATT.AT_AlterColumnType: "alter-column-type",
    ATT.AT_ClusterOn: "SHARE UPDATE EXCLUSIVE, catalog only",
    ATT.AT_DropCluster: "SHARE UPDATE EXCLUSIVE, catalog only",
    ATT.AT_SetLogged: "set-logged",
    ATT.AT_SetUnLogged: "set-logged",
    ATT.AT_SetRelOptions: "SHARE UPDATE EXCLUSIVE for fillfactor / autovacuum / toast options, else ACCESS EXCLUSIVE",
    ATT.AT_ResetRelOptions: "as SET ( ... )",
    ATT.AT_AttachPartition: "SHARE UPDATE EXCLUSIVE on the parent (ACCESS EXCLUSIVE before PostgreSQL 12)",
    ATT.AT_DetachPartition: "detach-partition-non-concurrent",
    **{t: "SHARE ROW EXCLUSIVE, catalog only" for t in _TRIGGERS},
}
"""ALTER TABLE sub-commands the linter judges, with what it says of them."""

_INDEX_ALTERS = frozenset({ATT.AT_AttachPartition})
"""ALTER INDEX sub-commands judged (ATTACH PARTITION: the safe way to index a partitioned table)."""


def _kind(stmt: Statement) -> str:
    words = stmt.sql.split()
    return " ".join(words[:2]).upper() if words else type(stmt.node).__name__


def unjudged(stmt: Statement) -> str | None:
    """What of the statement no rule models (None: all of it is judged)."""
    node = stmt.node
    if type(node) not in STATEMENTS:
        return f"{_kind(stmt)} ({type(node).__name__})"
    if isinstance(node, ast.AlterTableStmt):
        known = ALTER_TABLE if node.objtype == enums.ObjectType.OBJECT_TABLE else (
            _INDEX_ALTERS if node.objtype == enums.ObjectType.OBJECT_INDEX else ())
        for cmd in node.cmds or ():
            if isinstance(cmd, ast.AlterTableCmd) and cmd.subtype not in known:
                return f"{_kind(stmt)} ... {cmd.subtype.name}"
    return None


@check(RuleInfo("unknown-statement", "a statement kind (or ALTER TABLE sub-command) no rule models: unknown, "
                "not judged - never reported as clean", None, "none", severity="warning"))
def unknown_statement(stmt: Statement, ctx: Context) -> Iterator[Finding]:
    what = unjudged(stmt)
    if what is None:
        return
    yield ctx.finding(stmt, "unknown-statement",
                      f"unknown: not judged. No rule models {what}: its locks, whether it rewrites or scans a table, "
                      "and whether the running release survives it are not known, so it is not reported as clean",
                      "-- rehearse it (`shipyard db check` reports the locks it took and the tables it rewrote),\n"
                      "-- then say why it is safe:\n-- shipyard:ignore unknown-statement <reason>")
