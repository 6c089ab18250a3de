"""The statement rows of the DDL table: every *Stmt node of the installed pglast. The kinds a
migration writes are judged (lock, effect, what breaks, the safe form, the rules); the others
(roles, databases, cursors, foreign data, ...) are listed as not judged, so the linter calls
them unknown instead of clean, and a pglast with a new node fails the completeness test."""

from __future__ import annotations

from pglast import ast

from shipyard.database.locks import ACCESS_EXCLUSIVE as AE
from shipyard.database.locks import ACCESS_SHARE, ROW_EXCLUSIVE, SHARE
from shipyard.database.locks import SHARE_ROW_EXCLUSIVE as SRE
from shipyard.database.locks import SHARE_UPDATE_EXCLUSIVE as SUE
from shipyard.database.rules.catalog_entry import Entry, Example, not_judged

CATALOG_ONLY = "catalog only: no lock on an existing table"
BATCHES = "batches of a few thousand rows, each in its own transaction (WHERE ctid = ANY (ARRAY(SELECT ... LIMIT n)))"


def _catalog(form: str, why: str = "") -> Entry:
    return Entry(form, None, when=CATALOG_ONLY + (f"; {why}" if why else ""))


STATEMENTS: dict[type, Entry] = {
    ast.SelectStmt: Entry("SELECT", ACCESS_SHARE, "scan", when="ACCESS SHARE waits only for ACCESS EXCLUSIVE; "
                          "set_config() of lock_timeout / TimeZone is followed",
                          example=Example("SELECT count(*) FROM t")),
    ast.InsertStmt: Entry("INSERT", ROW_EXCLUSIVE, when="locks only the rows it inserts",
                          example=Example("INSERT INTO e VALUES (1)", "e")),
    ast.UpdateStmt: Entry("UPDATE", ROW_EXCLUSIVE, "scan",
                          when="without WHERE every row is written and locked until commit", safe=BATCHES,
                          rules=("whole-table-write",), example=Example("UPDATE t SET note = 'x'")),
    ast.DeleteStmt: Entry("DELETE", ROW_EXCLUSIVE, "scan",
                          when="without WHERE every row is locked until commit", safe=BATCHES,
                          rules=("whole-table-write",), example=Example("DELETE FROM child", "child")),
    ast.MergeStmt: Entry("MERGE", ROW_EXCLUSIVE, since=15, when="ROW EXCLUSIVE; which rows it writes is not "
                         "modelled", judged=False),
    ast.VariableSetStmt: Entry("SET / RESET", None, when="lock_timeout and TimeZone are followed"),
    ast.VariableShowStmt: Entry("SHOW", None),
    ast.TransactionStmt: Entry("BEGIN / COMMIT / ROLLBACK / SAVEPOINT", None,
                               when="transaction boundaries are followed"),
    ast.CreateStmt: Entry(
        "CREATE TABLE", None, when="a new table no release uses; a FOREIGN KEY takes SHARE ROW EXCLUSIVE on the "
        "table it references, PARTITION OF takes ACCESS EXCLUSIVE on the parent", rules=("missing-lock-timeout",),
        variants={"references": SRE, "partition_of": AE},
        more=(Example("CREATE TABLE n (id int, o_id int REFERENCES o (id))", "o", variant="references"),
              Example("CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200)", "p", variant="partition_of"))),
    ast.CreateTableAsStmt: Entry("CREATE TABLE ... AS / SELECT INTO", None,
                                 when="a new table; reads its source under ACCESS SHARE", variants={"source": ACCESS_SHARE},
                                 more=(Example("CREATE TABLE t_copy AS SELECT * FROM t", variant="source",
                                               effect="scan"),)),
    ast.IndexStmt: Entry("CREATE INDEX", SHARE, "scan", when="CONCURRENTLY: SHARE UPDATE EXCLUSIVE, outside a "
                         "transaction, refused on a partitioned table",
                         safe="CREATE INDEX CONCURRENTLY (partitioned: ON ONLY the parent, CONCURRENTLY on each "
                              "partition, ALTER INDEX ... ATTACH PARTITION)",
                         rules=("create-index-non-concurrent", "concurrent-index-on-partitioned",
                                "concurrently-in-transaction"),
                         variants={"concurrent": SUE}, example=Example("CREATE INDEX t_note_idx ON t (note)"),
                         more=(Example("CREATE INDEX CONCURRENTLY t_note_idx ON t (note)", variant="concurrent",
                                       outside_transaction=True),
                               Example("CREATE INDEX p_k ON ONLY p (k)", "p", effect="none"))),
    ast.DropStmt: Entry("DROP TABLE / INDEX / ...", AE,
                        when="DROP INDEX: ACCESS EXCLUSIVE on its table, CONCURRENTLY: SHARE UPDATE EXCLUSIVE; "
                             "other objects: " + CATALOG_ONLY,
                        breaks="DROP TABLE: every query of the running release that uses it",
                        safe="DROP INDEX CONCURRENTLY; DROP TABLE in " + "a contract migration",
                        rules=("drop-table", "drop-index-non-concurrent"), variants={"index_concurrent": SUE},
                        example=Example("DROP TABLE child", "child"),
                        more=(Example("DROP INDEX t_name_idx"),
                              Example("DROP INDEX CONCURRENTLY t_name_idx", variant="index_concurrent",
                                      outside_transaction=True))),
    ast.AlterTableStmt: Entry("ALTER TABLE", None, when="judged per sub-command (the next table)"),
    ast.RenameStmt: Entry("ALTER ... RENAME", AE, when="other objects than tables and columns: " + CATALOG_ONLY,
                          breaks="every query of the running release that names the old name",
                          safe="expand/contract: a new column kept equal by a trigger (a view for a table), "
                               "the old one dropped in a contract migration",
                          rules=("rename-column", "rename-table"),
                          example=Example("ALTER TABLE t RENAME COLUMN note TO remark")),
    ast.TruncateStmt: Entry("TRUNCATE", AE, when="the table gets a new, empty file; CASCADE empties every table "
                            "that references it", breaks="the running release's rows are gone",
                            safe="DELETE in batches; name every table to empty",
                            rules=("truncate", "truncate-cascade"), example=Example("TRUNCATE child", "child")),
    ast.VacuumStmt: Entry("VACUUM / ANALYZE", SUE, "scan", when="VACUUM FULL: ACCESS EXCLUSIVE, rewrite",
                          safe="plain VACUUM; pg_repack instead of VACUUM FULL", rules=("vacuum-full",),
                          variants={"full": AE}, example=Example("VACUUM t", outside_transaction=True),
                          more=(Example("VACUUM FULL t", variant="full", outside_transaction=True, effect="rewrite"),)),
    ast.ClusterStmt: Entry("CLUSTER", AE, "rewrite", safe="pg_repack --order-by", rules=("cluster",),
                           example=Example("CLUSTER t USING t_name_idx")),
    ast.ReindexStmt: Entry("REINDEX", SHARE, "scan", when="REINDEX INDEX: SHARE on its table (ACCESS EXCLUSIVE on "
                           "the index); CONCURRENTLY (PostgreSQL >= 12): SHARE UPDATE EXCLUSIVE",
                           safe="REINDEX ... CONCURRENTLY", rules=("reindex-non-concurrent", "needs-newer-postgresql"),
                           variants={"concurrent": SUE}, variants_since={"concurrent": 12}, example=Example("REINDEX TABLE t"),
                           more=(Example("REINDEX INDEX t_name_idx"),
                                 Example("REINDEX TABLE CONCURRENTLY t", variant="concurrent",
                                         outside_transaction=True))),
    ast.CreateTrigStmt: Entry("CREATE TRIGGER", SRE, rules=("missing-lock-timeout",),
                              example=Example("CREATE TRIGGER t_noop BEFORE UPDATE ON t FOR EACH ROW EXECUTE "
                                              "FUNCTION noop()", prepare=(
                                  "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS "
                                  "'BEGIN RETURN NEW; END'",))),
    ast.RuleStmt: Entry("CREATE RULE", AE, rules=("missing-lock-timeout",),
                        example=Example("CREATE RULE t_nothing AS ON DELETE TO t DO INSTEAD NOTHING")),
    ast.CreatePolicyStmt: Entry("CREATE POLICY", AE, rules=("missing-lock-timeout",),
                                example=Example("CREATE POLICY t_all ON t USING (true)")),
    ast.AlterPolicyStmt: Entry("ALTER POLICY", AE, rules=("missing-lock-timeout",),
                               example=Example("ALTER POLICY t_all ON t USING (id > 0)",
                                               prepare=("CREATE POLICY t_all ON t USING (true)",))),
    ast.LockStmt: Entry("LOCK TABLE", None, when="the mode it names, held until the transaction ends",
                        safe="no LOCK TABLE in a migration; a lock_timeout and short transactions",
                        rules=("lock-table",)),
    ast.CreateStatsStmt: Entry("CREATE STATISTICS", SUE, when="catalog only",
                               example=Example("CREATE STATISTICS t_st ON id, o_id FROM t")),
    ast.CommentStmt: Entry("COMMENT ON", None, when="COMMENT ON TABLE / COLUMN: SHARE UPDATE EXCLUSIVE on it",
                           variants={"relation": SUE},
                           more=(Example("COMMENT ON TABLE t IS 'x'", variant="relation"),
                                 Example("COMMENT ON COLUMN t.note IS 'x'", variant="relation"))),
    ast.CreateFunctionStmt: _catalog("CREATE FUNCTION / PROCEDURE", "its volatility is followed"),
    ast.ViewStmt: _catalog("CREATE VIEW"),
    ast.CreateSeqStmt: _catalog("CREATE SEQUENCE"),
    ast.AlterSeqStmt: _catalog("ALTER SEQUENCE"),
    ast.CreateEnumStmt: _catalog("CREATE TYPE ... AS ENUM"),
    ast.AlterEnumStmt: Entry("ALTER TYPE ... ADD VALUE", None,
                             when="a label added in a transaction cannot be used before it commits",
                             safe="add the label in a migration of its own", rules=("enum-value-used-in-same-transaction",)),
    ast.CompositeTypeStmt: _catalog("CREATE TYPE ... AS (...)"),
    ast.CreateDomainStmt: _catalog("CREATE DOMAIN"),
    ast.CreateExtensionStmt: _catalog("CREATE EXTENSION"),
    ast.GrantStmt: _catalog("GRANT / REVOKE"),
    ast.CreateSchemaStmt: _catalog("CREATE SCHEMA"),
    ast.RefreshMatViewStmt: not_judged("REFRESH MATERIALIZED VIEW", "ACCESS EXCLUSIVE on the view, EXCLUSIVE with "
                                       "CONCURRENTLY; recomputes the whole view", AE),
    ast.DoStmt: not_judged("DO", "an anonymous code block: what it runs is not parsed"),
    ast.CallStmt: not_judged("CALL", "a procedure: what it runs is not parsed"),
    ast.CopyStmt: not_judged("COPY", "ROW EXCLUSIVE into a table, ACCESS SHARE out of one", ROW_EXCLUSIVE),
    ast.AlterTypeStmt: not_judged("ALTER TYPE ... SET ( ... )", "not modelled"),
    ast.AlterDomainStmt: not_judged("ALTER DOMAIN", "ADD CONSTRAINT checks every column of the domain"),
    ast.AlterObjectSchemaStmt: not_judged("ALTER ... SET SCHEMA", "ACCESS EXCLUSIVE; the running release's "
                                          "queries that name the old schema fail", AE),
    ast.AlterOwnerStmt: not_judged("ALTER ... OWNER TO", "privileges of the running release's role may change"),
    ast.AlterFunctionStmt: not_judged("ALTER FUNCTION", "a changed volatility is not followed"),
    ast.AlterTableMoveAllStmt: not_judged("ALTER TABLE ALL IN TABLESPACE ... SET TABLESPACE",
                                          "rewrites every table it moves under ACCESS EXCLUSIVE", AE),
    ast.DefineStmt: not_judged("CREATE AGGREGATE / OPERATOR / TYPE / COLLATION ...", "not modelled"),
    ast.CreateRangeStmt: not_judged("CREATE TYPE ... AS RANGE", "not modelled"),
    ast.AlterStatsStmt: not_judged("ALTER STATISTICS", "not modelled"),
    ast.SecLabelStmt: not_judged("SECURITY LABEL", "not modelled"),
    ast.ConstraintsSetStmt: not_judged("SET CONSTRAINTS", "moves constraint checks within the transaction"),
    ast.ReplicaIdentityStmt: not_judged("(REPLICA IDENTITY)", "parsed as ALTER TABLE ... REPLICA IDENTITY"),
}
"""Judged statement kinds and the migration-like ones that are not; the rest are below."""

_OUTSIDE = {
    "roles and privileges of the cluster": (
        ast.CreateRoleStmt, ast.AlterRoleStmt, ast.AlterRoleSetStmt, ast.DropRoleStmt, ast.GrantRoleStmt,
        ast.AlterDefaultPrivilegesStmt, ast.DropOwnedStmt, ast.ReassignOwnedStmt, ast.CreateUserMappingStmt,
        ast.AlterUserMappingStmt, ast.DropUserMappingStmt),
    "databases, tablespaces and server settings": (
        ast.CreatedbStmt, ast.DropdbStmt, ast.AlterDatabaseStmt, ast.AlterDatabaseSetStmt,
        ast.AlterDatabaseRefreshCollStmt, ast.CreateTableSpaceStmt, ast.DropTableSpaceStmt,
        ast.AlterTableSpaceOptionsStmt, ast.AlterSystemStmt, ast.CheckPointStmt, ast.LoadStmt,
        ast.AlterCollationStmt),
    "replication and foreign data": (
        ast.CreatePublicationStmt, ast.AlterPublicationStmt, ast.CreateSubscriptionStmt, ast.AlterSubscriptionStmt,
        ast.DropSubscriptionStmt, ast.CreateFdwStmt, ast.AlterFdwStmt, ast.CreateForeignServerStmt,
        ast.AlterForeignServerStmt, ast.CreateForeignTableStmt, ast.ImportForeignSchemaStmt),
    "extensions of the server (access methods, casts, operators, languages, event triggers)": (
        ast.CreateAmStmt, ast.CreateCastStmt, ast.CreateConversionStmt, ast.CreateOpClassStmt,
        ast.CreateOpFamilyStmt, ast.AlterOpFamilyStmt, ast.AlterOperatorStmt, ast.CreatePLangStmt,
        ast.CreateTransformStmt, ast.CreateEventTrigStmt, ast.AlterEventTrigStmt, ast.AlterExtensionStmt,
        ast.AlterExtensionContentsStmt, ast.AlterObjectDependsStmt, ast.AlterTSConfigurationStmt,
        ast.AlterTSDictionaryStmt),
    "sessions, cursors and prepared statements": (
        ast.DeclareCursorStmt, ast.FetchStmt, ast.ClosePortalStmt, ast.PrepareStmt, ast.ExecuteStmt,
        ast.DeallocateStmt, ast.DiscardStmt, ast.ExplainStmt, ast.ListenStmt, ast.UnlistenStmt, ast.NotifyStmt),
    "nodes inside other statements (PL/pgSQL, set operations, the parser's wrapper)": (
        ast.PLAssignStmt, ast.ReturnStmt, ast.SetOperationStmt, ast.RawStmt),
}
for _why, _nodes in _OUTSIDE.items():
    for _node in _nodes:
        STATEMENTS[_node] = not_judged(_node.__name__, f"not a schema migration statement: {_why}")
