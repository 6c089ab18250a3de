"""One row of the DDL table (shipyard.database.rules.catalog): what PostgreSQL does for one
statement kind or ALTER TABLE sub-command. The linter reads its lock levels and whether it
is judged at all from these rows, the docs are printed from them and the claims test runs
each row's example on a real PostgreSQL, so the three cannot say different things."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shipyard.database.findings import Effect
from shipyard.database.locks import MODES

OLDEST, NEWEST = 12, 17
"""The PostgreSQL majors the table describes."""


@dataclass(frozen=True)
class Example:
    """A statement of the row's plain form, run by tests/integration/test_db_lint_claims.py on
    its fixture schema (tables t, o, child, e, p/p1, u, d): the lock pg_locks shows on `table`
    must be the row's lock and the table's file must change exactly when the effect is rewrite."""

    sql: str
    table: str = "t"
    prepare: tuple[str, ...] = ()
    """Committed before the example (and linted as an earlier migration)."""
    outside_transaction: bool = False
    others: tuple[tuple[str, str], ...] = ()
    """(table, lock) the example also takes on other tables."""
    variant: str | None = None
    """The row's variant the example is (its lock is the variant's); None: the plain form."""
    effect: Effect | None = None
    """The example's effect when it is not the row's (a form that `when` describes)."""
    before: tuple[str, ...] = ()
    """Run first in the example's transaction (rolled back with it)."""


@dataclass(frozen=True)
class Entry:
    form: str
    """The SQL form, e.g. 'ALTER TABLE ... ADD COLUMN'."""
    lock: str | None
    """The lock on the table the statement names, PostgreSQL 12-17 (None: no table lock)."""
    effect: Effect = "none"
    """Of the plain form: rewrite (every row copied), scan (every row read under the lock), none."""
    when: str = ""
    """What changes the lock or the effect (other forms, other tables, other versions)."""
    breaks: str = ""
    """What fails for the release running now ('' when nothing does)."""
    safe: str = ""
    """The safe form."""
    rules: tuple[str, ...] = ()
    """The rule ids that judge it."""
    judged: bool = True
    """False: the linter reports it as unknown-statement ('unknown: not judged')."""
    since: int = 0
    """First PostgreSQL major that has the form (0: all of 12-17)."""
    older: tuple[tuple[int, str], ...] = ()
    """(major, lock): the lock on servers older than that major."""
    variants: Mapping[str, str] = field(default_factory=dict)
    """Lock of a variant of the form the linter tells apart (e.g. 'concurrent'), by name."""
    variants_since: Mapping[str, int] = field(default_factory=dict)
    """First PostgreSQL major that has the variant, for those newer than the form."""
    example: Example | None = None
    more: tuple[Example, ...] = ()
    """Examples of the variants and of the other forms `when` describes."""

    def __post_init__(self) -> None:
        for mode in [self.lock, *self.variants.values(), *(m for _, m in self.older)]:
            if mode is not None and mode not in MODES:
                raise ValueError(f"{self.form}: not a lock mode: {mode!r}")
        for example in self.examples:
            if example.variant is not None and example.variant not in self.variants:
                raise ValueError(f"{self.form}: the example's variant {example.variant!r} is not one of the row's")

    @property
    def examples(self) -> tuple[Example, ...]:
        return ((self.example,) if self.example else ()) + self.more

    def effect_of(self, example: Example) -> Effect:
        return example.effect or self.effect

    def needs(self, variant: str | None = None) -> int:
        """The oldest PostgreSQL major that runs this form (0: every one)."""
        return max(self.since, self.variants_since.get(variant, 0) if variant else 0)

    def lock_for(self, pg_major: int, variant: str | None = None) -> str | None:
        """The lock this form (or its variant) takes on a server of that major."""
        if variant is not None:
            return self.variants[variant]
        for major, mode in sorted(self.older):
            if pg_major < major:
                return mode
        return self.lock


def internal(form: str) -> Entry:
    """A node PostgreSQL builds for itself (never parsed from a migration's text)."""
    return Entry(form, None, when="internal: built by PostgreSQL itself, never parsed from SQL text", judged=False)


def not_judged(form: str, why: str, lock: str | None = None) -> Entry:
    return Entry(form, lock, when=why, judged=False)
