"""The DDL table is complete for the installed pglast, consistent with the rules, used by the
linter for its lock levels and its "unknown-statement", and the docs are printed from it."""

from __future__ import annotations

import pytest
from pglast import ast, enums

from shipyard.database import locks
from shipyard.database.lint import RULES, lint_scripts
from shipyard.database.rules import doc
from shipyard.database.rules.catalog import ALTER_TABLE, STATEMENTS, Entry, Example
from shipyard.database.statements import parse_script

TOPIC_FREE = {"missing-lock-timeout", "unknown-statement", "unknown-ignore"}
"""Rules about every statement, not about one form."""


def _entries() -> list[Entry]:
    return list({id(e): e for e in [*STATEMENTS.values(), *ALTER_TABLE.values()]}.values())


def test_every_alter_table_subcommand_of_the_installed_pglast_is_in_the_table() -> None:
    assert [m.name for m in enums.AlterTableType if m not in ALTER_TABLE] == []


def test_every_statement_node_of_the_installed_pglast_is_in_the_table() -> None:
    nodes = [getattr(ast, n) for n in dir(ast) if n.endswith("Stmt") and isinstance(getattr(ast, n), type)]
    assert len(nodes) > 100
    assert [n.__name__ for n in nodes if n not in STATEMENTS] == []


def test_rules_named_by_the_table_exist_and_every_topic_rule_judges_a_row() -> None:
    named = {r for e in _entries() for r in e.rules}
    assert named - set(RULES) == set()
    assert set(RULES) - named - TOPIC_FREE == set()


@pytest.mark.parametrize("entry", [e for e in _entries() if e.judged], ids=lambda e: e.form)
def test_a_judged_row_that_breaks_or_blocks_has_a_rule_that_says_so(entry: Entry) -> None:
    topical = [r for r in entry.rules if r not in TOPIC_FREE]
    if entry.breaks:
        assert topical, f"{entry.form}: the table says it breaks the running release, no rule flags it"
    if entry.effect != "none" and entry.lock is not None and locks.blocks_writes(entry.lock):
        assert topical, f"{entry.form}: {entry.effect} under {entry.lock}, no rule flags it"


def test_versions_of_a_lock() -> None:
    attach = ALTER_TABLE[enums.AlterTableType.AT_AttachPartition]
    assert attach.lock_for(11) == "ACCESS EXCLUSIVE" and attach.lock_for(12) == attach.lock_for(17) == \
        "SHARE UPDATE EXCLUSIVE"
    assert ALTER_TABLE[enums.AlterTableType.AT_DetachPartition].lock_for(15, "concurrent") == "SHARE UPDATE EXCLUSIVE"
    with pytest.raises(ValueError):
        Entry("x", "SHARED")


EXAMPLES = [(getattr(k, "name", None) or k.__name__, e, x) for k, e in [*STATEMENTS.items(), *ALTER_TABLE.items()]
            for x in e.examples]


@pytest.mark.parametrize(("name", "entry", "example"), EXAMPLES, ids=[f"{n}:{x.sql}" for n, _, x in EXAMPLES])
def test_the_linter_takes_its_lock_levels_from_the_table(name: str, entry: Entry, example: Example) -> None:
    """What missing-lock-timeout says the example waits for is the table's lock (the table's
    examples are checked against pg_locks by the claims test)."""
    scripts = [parse_script(";\n".join(example.prepare) + ";", "0001.sql")] if example.prepare else []
    body = ("-- shipyard:no-transaction\n" if example.outside_transaction else "") + ";\n".join(
        [*example.before, example.sql]) + ";"
    scripts.append(parse_script(body, "0002.sql"))
    last = scripts[-1].statements[-1].line
    found = [f for f in lint_scripts(scripts, 15) if f.source == "0002.sql" and f.line == last]
    assert "unknown-statement" not in [f.rule for f in found]
    waits = [f for f in found if f.rule == "missing-lock-timeout"]
    lock = entry.lock_for(15, example.variant)
    if lock is not None and (locks.blocks_reads(lock) or locks.blocks_writes(lock)):
        assert [f.lock for f in waits] == [lock]
    else:
        assert waits == []


def test_an_example_of_a_variant_the_row_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="variant"):
        Entry("x", "SHARE", example=Example("SELECT 1", variant="nope"))


@pytest.mark.parametrize("sql", ["ALTER TABLE t SET (user_catalog_table = true)",
                                 "ALTER TABLE t ALTER COLUMN id DROP IDENTITY", "ALTER TABLE t ENABLE ROW LEVEL SECURITY"])
def test_a_row_marked_not_judged_is_unknown_and_says_what_the_table_knows(sql: str) -> None:
    found = {f.rule: f for f in lint_scripts([parse_script(sql, "0001.sql")], 15, assume_lock_timeout=True)}
    if "unknown-statement" in found:
        assert "the DDL table says only" in found["unknown-statement"].message
        assert found["unknown-statement"].lock == "ACCESS EXCLUSIVE"
    else:
        assert sql.startswith("ALTER TABLE t SET (")           # judged: a storage parameter


def test_the_checked_in_doc_is_the_generated_one() -> None:
    assert doc.DOC.read_text() == doc.render(), "run: python -m shipyard.database.rules.doc --write"


def test_the_doc_lists_every_row_and_every_rule() -> None:
    text = doc.render()
    for member in enums.AlterTableType:
        assert f"`{member.name}`" in text
    for node in STATEMENTS:
        assert f"`{node.__name__}`" in text
    for rule in RULES:
        assert f"### {rule}\n" in text


def test_a_rule_without_prose_stops_the_doc() -> None:
    prose = doc.PROSE.read_text()
    with pytest.raises(ValueError, match="cluster"):
        doc.render(prose.replace("### cluster\n", "### clustr\n"))


@pytest.mark.parametrize("rule", [r for r, i in RULES.items() if i.lock in locks.MODES])
def test_a_rules_own_lock_is_the_lock_of_a_row_it_judges(rule: str) -> None:
    """A rule's findings carry its RuleInfo lock; it must be what the table says of a form the
    rule judges (the plain form or a variant), so the two cannot drift apart."""
    rows = [e for e in _entries() if rule in e.rules]
    assert any(RULES[rule].lock in {e.lock, *e.variants.values()} for e in rows), (rule, [e.form for e in rows])
