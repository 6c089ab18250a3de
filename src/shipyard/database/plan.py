"""What a deploy would do to the database: which migrations are pending, which of them are
expand (safe while the old release runs: applied before the new release takes traffic)
and which are held back as contract (they break the old release: applied by `shipyard db
contract` once no old instance runs). Ordering is kept: everything from the first contract
migration on is held, because a later migration may depend on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from shipyard.spec import DatabaseSpec

from . import ledger
from .backfill import read_progress
from .connect import major_of, server_version
from .findings import Finding
from .lint import lint_scripts, load_catalog
from .sources import Migration, from_alembic, from_directory, up_to

RENAMES = ("rename-column", "rename-table")


_RENAME_STEPS = {
    "rename-column": "1. expand: add the new column, keep both in sync with a trigger (or a generated column), "
                     "backfill it in batches; 2. deploy the release that reads the new name; 3. contract later: "
                     "drop the trigger and the old column",
    "rename-table": "1. expand: rename the table and create a view under the old name in the same transaction "
                    "(a simple view is updatable); 2. deploy the release that uses the new name; 3. contract "
                    "later: drop the view",
}


def held_renames_text(renames: list[Finding]) -> str:
    """Why a deploy with a held-back rename stops before the new release starts, and the safe form."""
    first = renames[0]
    more = f" (and {len(renames) - 1} more rename(s))" if len(renames) > 1 else ""
    return (f"{first.location}: `{first.statement}` is held back as a contract migration{more} ({first.message}), "
            "so it would run only once the old release is gone, and the new release would start on the schema "
            "without it: its queries of the new name fail. Nothing was changed. Ship the rename in steps both "
            f"releases survive: {_RENAME_STEPS[first.rule]}. Or deploy with --allow-unsafe \"reason\" if the new "
            f"release works with either name. As SQL:\n{first.fix}")


def load_source(db: DatabaseSpec, resolve: Any) -> list[Migration]:
    """All migrations of the spec's source up to database.target. `resolve` makes a spec path absolute."""
    if db.migrations is not None:
        migrations = from_directory(Path(resolve(db.migrations)))
    else:
        assert db.alembic is not None
        migrations = from_alembic(Path(resolve(db.alembic)))
    return up_to(migrations, db.target)


def phase_of(migration: Migration, findings: list[Finding]) -> str:
    """contract when the file says so (`-- shipyard:contract`) or a rule says the old release breaks.
    Ignoring such a rule is a claim that the old release does not use what changes: the
    migration then counts as expand, and the compatibility gate puts the claim to the test."""
    if migration.script.contract:
        return "contract"
    if any(f.breaks_old_release and f.ignored is None and f.source == migration.script.source for f in findings):
        return "contract"
    return "expand"


@dataclass
class MigrationPlan:
    migrations: list[Migration]
    applied: dict[str, ledger.Applied]
    pending: list[Migration]
    findings: list[Finding]
    phases: dict[str, str]
    pg_version: int
    changed: list[str] = field(default_factory=list)
    """Applied migrations whose file differs from what was applied."""
    adopted_alembic: str | None = None
    """Alembic revision found in the database without shipyard records (migrated before shipyard)."""
    backfills: dict[str, dict[str, Any]] = field(default_factory=dict)
    """version -> progress of the pending declared backfills that have started."""

    @property
    def expand(self) -> list[Migration]:
        out = []
        for m in self.pending:
            if self.phases[m.version] == "contract":
                break
            out.append(m)
        return out

    @property
    def held(self) -> list[Migration]:
        return self.pending[len(self.expand):]

    @property
    def held_renames(self) -> list[Finding]:
        """Renames held back as contract. The old release breaks once they run, but the new
        release (written for the new name) starts before they run: neither can serve."""
        held = {m.script.source for m in self.held}
        return [f for f in self.findings if f.rule in RENAMES and f.ignored is None and f.source in held]

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.blocking]

    def gate_findings(self, contract: bool = False) -> list[Finding]:
        """What stops a deploy (the expand set) or `db contract` (everything pending, where breaking
        the old release is the point and so does not count)."""
        todo = {m.script.source for m in (self.pending if contract else self.expand)}
        return [f for f in self.blocking if f.source in todo and not (contract and f.breaks_old_release)]

    def resume_from(self, m: Migration) -> int:
        """Statements of `m` already applied by a run that failed half-way."""
        row = self.applied.get(m.version)
        return row.statements_applied if row and not row.complete else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pg_version": self.pg_version,
            "applied": [r.to_dict() for r in self.applied.values()],
            "pending": [{"version": m.version, "name": m.name, "source": m.source, "phase": self.phases[m.version],
                         "resume_at_statement": self.resume_from(m), "backfill": self.backfills.get(m.version)}
                        for m in self.pending],
            "expand": [m.version for m in self.expand],
            "held": [m.version for m in self.held],
            "findings": [f.to_dict() for f in self.findings],
            "blocking": len(self.blocking),
            "held_renames": [f.location for f in self.held_renames],
            "changed": self.changed,
            "adopted_alembic": self.adopted_alembic,
        }


async def plan_migrations(conn: psycopg.AsyncConnection, migrations: list[Migration], *,
                          assume_lock_timeout: bool = True, pg_version: int | None = None) -> MigrationPlan:
    """Compare the source with the target database's ledger and lint what is pending on the live
    catalog. This is the one place pending migrations are judged: a deploy, `db status`, `db check`
    and `db lint SPEC` all read its findings. pg_version: judge as that major instead of the server's."""
    version = await server_version(conn)
    applied = await ledger.read(conn)
    adopted = None
    if not applied and migrations and migrations[0].name.startswith("alembic_"):
        adopted = await ledger.alembic_revision(conn)
    done: set[str] = {v for v, r in applied.items() if r.complete}
    if adopted:
        for m in migrations:
            done.add(m.version)
            if m.version == adopted:
                break
    pending = [m for m in migrations if m.version not in done]
    changed = [m.version for m in migrations if m.version in applied and applied[m.version].checksum != m.checksum]
    findings = lint_scripts([m.script for m in pending], pg_version or major_of(version),
                            assume_lock_timeout=assume_lock_timeout,
                            catalog=await load_catalog(conn))
    # what ran is what the ledger says it ran as: an applied migration is not linted again, so a
    # contract one that no marker names would otherwise read as expand
    phases = {m.version: applied[m.version].phase if m.version in done and m.version in applied
              else phase_of(m, findings) for m in migrations}
    started = await read_progress(conn) if any(m.backfill for m in pending) else {}
    return MigrationPlan(migrations=migrations, applied=applied, pending=pending, findings=findings, phases=phases,
                         pg_version=version, changed=changed, adopted_alembic=adopted,
                         backfills={m.version: started[m.version] for m in pending if m.version in started})
