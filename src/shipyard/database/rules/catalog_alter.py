"""The ALTER TABLE rows of the DDL table: every AlterTableType of the installed pglast, with the
lock PostgreSQL 12-17 takes for it (AlterTableGetLockLevel), what it does to the table, what
the running release loses and the safe form. A pglast that adds a sub-command fails the unit
test that checks this table is complete, before the linter could call it clean."""

from __future__ import annotations

from typing import Any

from shipyard.database.locks import ACCESS_EXCLUSIVE as AE
from shipyard.database.locks import SHARE_ROW_EXCLUSIVE as SRE
from shipyard.database.locks import SHARE_UPDATE_EXCLUSIVE as SUE
from shipyard.database.rules.catalog_entry import Entry, Example, internal, not_judged
from shipyard.database.rules.schema import ATT

BATCHED = "ADD COLUMN without the default, SET DEFAULT for new rows, backfill in batches"
CONTRACT = "a contract migration (`-- shipyard:contract`), after the release that stops using it"
TRIGGER = Entry("ALTER TABLE ... ENABLE / DISABLE TRIGGER", SRE, when="catalog only; blocks writes while it waits",
                example=Example("ALTER TABLE child DISABLE TRIGGER ALL", "child"))
RULE = Entry("ALTER TABLE ... ENABLE / DISABLE RULE", AE, when="catalog only")
ROW_SECURITY = not_judged("ALTER TABLE ... ENABLE / DISABLE / FORCE ROW LEVEL SECURITY",
                          "ACCESS EXCLUSIVE; without a policy the running release's role may see no rows", AE)

ALTER_TABLE: dict[Any, Entry] = {
    ATT.AT_AddColumn: Entry(
        "ALTER TABLE ... ADD COLUMN", AE, "none",
        when="rewrite with a volatile DEFAULT, an identity or serial column, a STORED generated column, or any "
             "DEFAULT before PostgreSQL 11; NOT NULL without DEFAULT scans and fails on the first row",
        breaks="NOT NULL without DEFAULT: the running release's INSERTs do not set it",
        safe=BATCHED,
        rules=("add-column-volatile-default", "add-column-default-rewrite", "add-column-stored-generated",
               "add-column-identity", "add-column-not-null-no-default", "add-foreign-key-validating"),
        variants={"references": SRE}, example=Example("ALTER TABLE t ADD COLUMN extra int"),
        more=(Example("ALTER TABLE t ADD COLUMN o3 int REFERENCES o (id)", others=(("o", SRE),)),
              Example("ALTER TABLE t ADD COLUMN r float DEFAULT random()", effect="rewrite"),
              Example("ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY", effect="rewrite"),
              Example("ALTER TABLE t ADD COLUMN twice int GENERATED ALWAYS AS (id * 2) STORED", effect="rewrite"),
              Example("ALTER TABLE t ADD COLUMN n int NOT NULL DEFAULT 0"))),
    ATT.AT_AddColumnToView: internal("CREATE OR REPLACE VIEW (new columns)"),
    ATT.AT_ColumnDefault: Entry(
        "ALTER TABLE ... ALTER COLUMN ... SET / DROP DEFAULT", AE, when="catalog only",
        breaks="DROP DEFAULT on a NOT NULL column: INSERTs that leave the column out fail",
        safe="drop the default in a contract migration, after a release that always sets the column",
        rules=("drop-default-not-null",), example=Example("ALTER TABLE t ALTER COLUMN note SET DEFAULT 'x'")),
    ATT.AT_CookedColumnDefault: internal("(column default, as PostgreSQL stores it)"),
    ATT.AT_DropNotNull: Entry("ALTER TABLE ... ALTER COLUMN ... DROP NOT NULL", AE, when="catalog only",
                              example=Example("ALTER TABLE d ALTER COLUMN status DROP NOT NULL", "d")),
    ATT.AT_SetNotNull: Entry(
        "ALTER TABLE ... ALTER COLUMN ... SET NOT NULL", AE, "scan",
        when="no scan when a validated CHECK (col IS NOT NULL) proves it (PostgreSQL >= 12)",
        safe="ADD CHECK (col IS NOT NULL) NOT VALID; VALIDATE in a later transaction; then SET NOT NULL",
        rules=("set-not-null",), example=Example("ALTER TABLE t ALTER COLUMN note SET NOT NULL"),
        more=(Example("ALTER TABLE t ALTER COLUMN email SET NOT NULL", effect="none"),)),
    ATT.AT_SetExpression: Entry(
        "ALTER TABLE ... ALTER COLUMN ... SET EXPRESSION", AE, "rewrite", since=17,
        when="recomputes the stored generated column for every row",
        safe="a new generated column (or a trigger-kept one) filled in batches, then swap readers",
        rules=("table-rewrite", "needs-newer-postgresql")),
    ATT.AT_DropExpression: Entry("ALTER TABLE ... ALTER COLUMN ... DROP EXPRESSION", AE, since=13,
                                 when="catalog only: the stored values stay",
                                 breaks="the running release's writes no longer fill the column",
                                 judged=False),
    ATT.AT_SetStatistics: Entry("ALTER TABLE ... ALTER COLUMN ... SET STATISTICS", SUE, when="catalog only",
                                example=Example("ALTER TABLE t ALTER COLUMN note SET STATISTICS 500")),
    ATT.AT_SetOptions: Entry("ALTER TABLE ... ALTER COLUMN ... SET ( attribute_option = ... )", SUE,
                             when="catalog only",
                             example=Example("ALTER TABLE t ALTER COLUMN note SET (n_distinct = 100)")),
    ATT.AT_ResetOptions: Entry("ALTER TABLE ... ALTER COLUMN ... RESET ( attribute_option )", SUE,
                               when="catalog only", example=Example("ALTER TABLE t ALTER COLUMN note RESET (n_distinct)")),
    ATT.AT_SetStorage: Entry("ALTER TABLE ... ALTER COLUMN ... SET STORAGE", AE,
                             when="catalog only: applies to values written from now on",
                             example=Example("ALTER TABLE t ALTER COLUMN note SET STORAGE EXTERNAL")),
    ATT.AT_SetCompression: Entry("ALTER TABLE ... ALTER COLUMN ... SET COMPRESSION", AE, since=14,
                                 when="catalog only: applies to values written from now on",
                                 rules=("needs-newer-postgresql",),
                                 example=Example("ALTER TABLE t ALTER COLUMN note SET COMPRESSION pglz")),
    ATT.AT_DropColumn: Entry(
        "ALTER TABLE ... DROP COLUMN", AE, when="catalog only (the space is reclaimed as rows are rewritten)",
        breaks="every query of the running release that names the column", safe=CONTRACT,
        rules=("drop-column",), example=Example("ALTER TABLE t DROP COLUMN note")),
    ATT.AT_AddIndex: internal("(index of ADD PRIMARY KEY / UNIQUE, as PostgreSQL transforms it)"),
    ATT.AT_ReAddIndex: internal("(index rebuilt by ALTER COLUMN TYPE)"),
    ATT.AT_AddConstraint: Entry(
        "ALTER TABLE ... ADD CONSTRAINT", AE, "scan",
        when="CHECK / FOREIGN KEY ... NOT VALID: no scan; FOREIGN KEY: SHARE ROW EXCLUSIVE on both tables; "
             "UNIQUE / PRIMARY KEY: builds its index under ACCESS EXCLUSIVE unless USING INDEX",
        safe="NOT VALID, then VALIDATE CONSTRAINT in a later transaction; UNIQUE: CREATE UNIQUE INDEX "
             "CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
        rules=("add-check-validating", "add-foreign-key-validating", "add-unique-without-index"),
        variants={"foreign": SRE}, example=Example("ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0)"),
        more=(Example("ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (o_id) REFERENCES o (id)", variant="foreign",
                      others=(("o", SRE),)),
              Example("ALTER TABLE t ADD CONSTRAINT t_o FOREIGN KEY (o_id) REFERENCES o (id) NOT VALID",
                      variant="foreign", others=(("o", SRE),), effect="none"),
              Example("ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0) NOT VALID", effect="none"),
              Example("ALTER TABLE t ADD CONSTRAINT t_name_key UNIQUE (name)"))),
    ATT.AT_ReAddConstraint: internal("(constraint re-added by ALTER COLUMN TYPE)"),
    ATT.AT_ReAddDomainConstraint: internal("(domain constraint re-added by ALTER COLUMN TYPE)"),
    ATT.AT_AlterConstraint: Entry("ALTER TABLE ... ALTER CONSTRAINT ... [NOT] DEFERRABLE", AE,
                                  when="catalog only",
                                  example=Example("ALTER TABLE child ALTER CONSTRAINT child_o_id_fkey DEFERRABLE",
                                                  "child")),
    ATT.AT_ValidateConstraint: Entry(
        "ALTER TABLE ... VALIDATE CONSTRAINT", SUE, "scan",
        when="a FOREIGN KEY also takes ROW SHARE on the referenced table; in the transaction of its NOT VALID "
             "add it scans under the add's lock",
        safe="in a transaction of its own", rules=("validate-in-same-transaction",),
        example=Example("ALTER TABLE t VALIDATE CONSTRAINT t_pos",
                        prepare=("ALTER TABLE t ADD CONSTRAINT t_pos CHECK (price > 0) NOT VALID",))),
    ATT.AT_AddIndexConstraint: internal("(ADD CONSTRAINT ... USING INDEX, as PostgreSQL transforms it)"),
    ATT.AT_DropConstraint: Entry("ALTER TABLE ... DROP CONSTRAINT", AE, when="catalog only",
                                 example=Example("ALTER TABLE t DROP CONSTRAINT t_email_nn")),
    ATT.AT_ReAddComment: internal("(comment re-added by ALTER COLUMN TYPE)"),
    ATT.AT_AlterColumnType: Entry(
        "ALTER TABLE ... ALTER COLUMN ... TYPE", AE, "rewrite",
        when="none when binary-coercible (varchar(n) -> varchar(m >= n) / text, numeric(p,s) -> numeric(q >= p,s), "
             "cidr -> inet, a higher time precision, also written as USING col::new_type); "
             "timestamp <-> timestamptz under TimeZone UTC (PostgreSQL >= 12): no table rewrite, but every index "
             "on the column is rebuilt under ACCESS EXCLUSIVE; an empty table: a rewrite of nothing",
        safe="a new column written alongside the old one, backfilled in batches, swapped in a contract step; "
             "a shorter varchar: a CHECK (char_length(col) <= n) NOT VALID, validated later",
        rules=("alter-column-type",), example=Example("ALTER TABLE t ALTER COLUMN id TYPE bigint"),
        more=(Example("ALTER TABLE t ALTER COLUMN name TYPE text", effect="none"),
              Example("ALTER TABLE t ALTER COLUMN name TYPE text USING name::text", effect="none"),
              Example("ALTER TABLE t ALTER COLUMN price TYPE numeric(12,2)", effect="none"),
              Example("ALTER TABLE t ALTER COLUMN addr TYPE inet", effect="none"),
              Example("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", before=("SET LOCAL TimeZone = 'UTC'",),
                      effect="none"),
              Example("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz", before=("SET LOCAL TimeZone = 'Asia/Tokyo'",),
                      effect="rewrite"))),
    ATT.AT_AlterColumnGenericOptions: not_judged("ALTER FOREIGN TABLE ... ALTER COLUMN ... OPTIONS",
                                                 "foreign tables are not modelled", AE),
    ATT.AT_ChangeOwner: not_judged("ALTER TABLE ... OWNER TO", "ACCESS EXCLUSIVE; the running release's role may "
                                   "lose its privileges", AE),
    ATT.AT_ClusterOn: Entry("ALTER TABLE ... CLUSTER ON", SUE, when="catalog only (CLUSTER itself rewrites)",
                            example=Example("ALTER TABLE t CLUSTER ON t_name_idx")),
    ATT.AT_DropCluster: Entry("ALTER TABLE ... SET WITHOUT CLUSTER", SUE, when="catalog only",
                              example=Example("ALTER TABLE t SET WITHOUT CLUSTER")),
    ATT.AT_SetLogged: Entry("ALTER TABLE ... SET LOGGED", AE, "rewrite", when="writes the whole table to the WAL",
                            safe="create the table LOGGED from the start; or a new logged table filled in batches",
                            rules=("set-logged",), example=Example("ALTER TABLE u SET LOGGED", "u")),
    ATT.AT_SetUnLogged: Entry("ALTER TABLE ... SET UNLOGGED", AE, "rewrite",
                              breaks="the table is emptied after a crash and is not replicated",
                              safe="keep the table logged", rules=("set-logged",),
                              example=Example("ALTER TABLE t SET UNLOGGED")),
    ATT.AT_DropOids: Entry("ALTER TABLE ... SET WITHOUT OIDS", AE, when="no-op since PostgreSQL 12",
                           example=Example("ALTER TABLE t SET WITHOUT OIDS")),
    ATT.AT_SetAccessMethod: Entry("ALTER TABLE ... SET ACCESS METHOD", AE, "rewrite", since=15,
                                  when="none when the table already has that access method",
                                  safe="a new table filled in batches",
                                  rules=("table-rewrite", "needs-newer-postgresql"),
                                  example=Example("ALTER TABLE t SET ACCESS METHOD heap2", before=(
                                      "CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler",)),
                                  more=(Example("ALTER TABLE t SET ACCESS METHOD heap", effect="none"),)),
    ATT.AT_SetTableSpace: Entry("ALTER TABLE ... SET TABLESPACE", AE, "rewrite",
                                when="copies every file of the table; none when it is there already",
                                safe="pg_repack --tablespace",
                                rules=("table-rewrite",)),
    ATT.AT_SetRelOptions: Entry(
        "ALTER TABLE ... SET ( storage_parameter = ... )", AE,
        when="SHARE UPDATE EXCLUSIVE when every option is fillfactor, parallel_workers, autovacuum_*, "
             "toast_tuple_target or toast.*", variants={"light": SUE},
        example=Example("ALTER TABLE t SET (user_catalog_table = false)"),
        more=(Example("ALTER TABLE t SET (fillfactor = 90, autovacuum_enabled = false)", variant="light"),)),
    ATT.AT_ResetRelOptions: Entry("ALTER TABLE ... RESET ( storage_parameter )", AE, when="as SET ( ... )",
                                  variants={"light": SUE}, example=Example("ALTER TABLE t RESET (user_catalog_table)"),
                                  more=(Example("ALTER TABLE t RESET (fillfactor)", variant="light"),)),
    ATT.AT_ReplaceRelOptions: internal("(options of CREATE OR REPLACE VIEW)"),
    **{t: TRIGGER for t in (ATT.AT_EnableTrig, ATT.AT_EnableAlwaysTrig, ATT.AT_EnableReplicaTrig,
                            ATT.AT_DisableTrig, ATT.AT_EnableTrigAll, ATT.AT_DisableTrigAll, ATT.AT_EnableTrigUser,
                            ATT.AT_DisableTrigUser)},
    **{t: RULE for t in (ATT.AT_EnableRule, ATT.AT_EnableAlwaysRule, ATT.AT_EnableReplicaRule, ATT.AT_DisableRule)},
    ATT.AT_AddInherit: not_judged("ALTER TABLE ... INHERIT", "ACCESS EXCLUSIVE on the child, SHARE UPDATE EXCLUSIVE "
                                  "on the parent; the parent's queries start to see the child's rows", AE),
    ATT.AT_DropInherit: not_judged("ALTER TABLE ... NO INHERIT", "ACCESS EXCLUSIVE; the parent's queries stop "
                                   "seeing the child's rows", AE),
    ATT.AT_AddOf: not_judged("ALTER TABLE ... OF type", "typed tables are not modelled", AE),
    ATT.AT_DropOf: not_judged("ALTER TABLE ... NOT OF", "typed tables are not modelled", AE),
    ATT.AT_ReplicaIdentity: Entry("ALTER TABLE ... REPLICA IDENTITY", AE, when="catalog only",
                                  example=Example("ALTER TABLE t REPLICA IDENTITY FULL")),
    ATT.AT_EnableRowSecurity: ROW_SECURITY,
    ATT.AT_DisableRowSecurity: ROW_SECURITY,
    ATT.AT_ForceRowSecurity: ROW_SECURITY,
    ATT.AT_NoForceRowSecurity: ROW_SECURITY,
    ATT.AT_GenericOptions: not_judged("ALTER FOREIGN TABLE ... OPTIONS", "foreign tables are not modelled", AE),
    ATT.AT_AttachPartition: Entry(
        "ALTER TABLE ... ATTACH PARTITION", SUE, "none", older=((12, AE),),
        when="on the parent; the partition gets ACCESS EXCLUSIVE and is scanned for its bound unless a validated "
             "CHECK proves it",
        safe="ADD a CHECK matching the bound NOT VALID, VALIDATE it, then ATTACH",
        example=Example("ALTER TABLE p ATTACH PARTITION p2 FOR VALUES FROM (100) TO (200)", "p",
                        prepare=("CREATE TABLE p2 (id int, k int)",), others=(("p2", AE),))),
    ATT.AT_DetachPartition: Entry(
        "ALTER TABLE ... DETACH PARTITION", AE, when="CONCURRENTLY (PostgreSQL >= 14): SHARE UPDATE EXCLUSIVE",
        breaks="the parent's queries stop seeing the partition's rows",
        safe="DETACH PARTITION ... CONCURRENTLY, outside a transaction block",
        rules=("detach-partition-non-concurrent", "needs-newer-postgresql"), variants={"concurrent": SUE},
        variants_since={"concurrent": 14},
        example=Example("ALTER TABLE p DETACH PARTITION p1", "p", others=(("p1", AE),)),
        more=(Example("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", "p", variant="concurrent",
                      outside_transaction=True),)),
    ATT.AT_DetachPartitionFinalize: Entry("ALTER TABLE ... DETACH PARTITION ... FINALIZE", SUE, since=14,
                                          when="completes an interrupted DETACH CONCURRENTLY",
                                          rules=("needs-newer-postgresql",)),
    ATT.AT_AddIdentity: Entry("ALTER TABLE ... ALTER COLUMN ... ADD GENERATED AS IDENTITY", AE,
                              when="on an existing NOT NULL column: catalog only",
                              example=Example("ALTER TABLE t ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")),
    ATT.AT_SetIdentity: Entry("ALTER TABLE ... ALTER COLUMN ... SET GENERATED / SET sequence_option", AE,
                              when="catalog only",
                              breaks="SET GENERATED ALWAYS: INSERTs of the running release that set the column fail",
                              judged=False),
    ATT.AT_DropIdentity: not_judged("ALTER TABLE ... ALTER COLUMN ... DROP IDENTITY", "ACCESS EXCLUSIVE; the "
                                    "running release's INSERTs that leave the column out fail", AE),
    ATT.AT_ReAddStatistics: internal("(extended statistics re-added by ALTER COLUMN TYPE)"),
}
