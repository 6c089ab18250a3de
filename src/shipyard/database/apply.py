"""Applying migrations to the real database: one at a time, in order, under lock_timeout,
retried with backoff when a lock could not be had in time, each one recorded in the
ledger as part of its own transaction (or statement by statement when it cannot run in a
transaction), so a run that stops half-way - failure, crash, Ctrl-C - resumes exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from . import ledger
from .backfill import BackfillFailed, Report, run_backfill
from .connect import DatabaseError, connect, redact
from .execute import StatementFailed, StatementHooks, run_script
from .sources import Migration
from .statements import Statement, transaction_kind


class MigrationFailed(DatabaseError):
    """A migration failed on the real database; what was applied before it is recorded."""


class MigrationLocked(DatabaseError):
    """Another shipyard is migrating this database right now."""

    exit_code = 3


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    """Versions applied completely by this run."""
    seconds: dict[str, float] = field(default_factory=dict)
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "seconds": self.seconds, "retries": self.retries}


def backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 10 s: long enough for a blocking transaction to finish."""
    return min(0.5 * 2 ** attempt, 10.0)


async def apply_migrations(url: str, migrations: list[Migration], *, phases: dict[str, str], lock_timeout: float,
                           retries: int, resume: dict[str, int] | None = None, service: str | None = None,
                           release: str | None = None, note: str | None = None,
                           log: Callable[[str], None] = lambda _m: None, progress: Report | None = None,
                           sleep: Callable[[float], Any] = asyncio.sleep) -> ApplyResult:
    """Apply `migrations` in order; raises MigrationFailed (with the count applied) on the first that fails.
    `progress` gets a declared backfill's progress (see backfill.run_backfill)."""
    conn = await connect(url)
    result = ApplyResult()
    try:
        await ledger.ensure_table(conn)
        if not await ledger.try_lock(conn):
            raise MigrationLocked(f"another process is migrating {redact(url)} right now",
                                  "wait for it to finish, then deploy again")
        try:
            for m in migrations:
                start = (resume or {}).get(m.version, 0)
                t0 = time.monotonic()
                attempt = 0
                while m.backfill is None:
                    try:
                        await _apply_one(conn, m, start, phase=phases.get(m.version, "expand"),
                                         lock_timeout=lock_timeout, service=service, release=release, note=note)
                        break
                    except StatementFailed as e:
                        if e.lock_timeout and attempt < retries:
                            wait = backoff(attempt)
                            attempt += 1
                            result.retries += 1
                            log(f"{m.label}: {e.message}; try {attempt + 1} of {retries + 1} in {wait:g}s")
                            start = await _recorded(conn, m, start)
                            await sleep(wait)
                            continue
                        done = await _recorded(conn, m, start)
                        raise MigrationFailed(
                            f"migration {m.label} failed: {e.message}"
                            + (f" (after {attempt + 1} tries: a lock could not be had within lock_timeout)"
                               if e.lock_timeout else ""),
                            f"{len(result.applied)} migration(s) before it were applied"
                            + (f"; {done} of its statements are applied and recorded, the next run resumes there"
                               if done else "; nothing of it was applied")) from None
                if m.backfill is not None:
                    await _backfill(conn, m, phase=phases.get(m.version, "expand"), lock_timeout=lock_timeout,
                                    retries=retries, service=service, release=release, note=note, log=log,
                                    progress=progress, sleep=sleep, done_before=len(result.applied))
                result.applied.append(m.version)
                result.seconds[m.version] = round(time.monotonic() - t0, 3)
                log(f"{m.label}: applied in {result.seconds[m.version]:.3f}s")
        finally:
            await ledger.unlock(conn)
    except asyncio.CancelledError:
        await conn.cancel_safe()      # stop the statement on the server too; its transaction rolls back
        raise
    finally:
        await conn.close()
    return result


async def _backfill(conn: psycopg.AsyncConnection, m: Migration, *, phase: str, lock_timeout: float, retries: int,
                    service: str | None, release: str | None, note: str | None, log: Callable[[str], None],
                    progress: Report | None, sleep: Callable[[float], Any], done_before: int) -> None:
    """A declared backfill: its ledger row advances inside every batch's transaction (partial, 0 of 1)
    and says applied in the transaction that finds nothing left."""
    assert m.backfill is not None
    t0 = time.monotonic()

    async def record(c: psycopg.AsyncConnection, done: bool) -> None:
        nonlocal t0
        now = time.monotonic()
        await ledger.record(c, version=m.version, name=m.name, checksum=m.checksum, phase=phase,
                            applied=1 if done else 0, total=1, duration_ms=int((now - t0) * 1000),
                            service=service, release=release, note=note)
        t0 = now

    try:
        await run_backfill(conn, version=m.version, label=m.label, backfill=m.backfill, lock_timeout=lock_timeout,
                           retries=retries, backoff=backoff, record=record, log=log, progress=progress,
                           sleep=sleep)
    except BackfillFailed as e:
        raise MigrationFailed(f"migration {m.label} failed: {e.message}",
                              f"{done_before} migration(s) before it were applied; {e.hint}") from None


async def _recorded(conn: psycopg.AsyncConnection, m: Migration, fallback: int) -> int:
    """How many of `m`'s statements the ledger says are applied (it is written after each one commits)."""
    if m.script.transactional:
        return 0
    row = (await ledger.read(conn)).get(m.version)
    return row.statements_applied if row is not None else fallback


async def _apply_one(conn: psycopg.AsyncConnection, m: Migration, start: int, *, phase: str, lock_timeout: float,
                     service: str | None, release: str | None, note: str | None) -> None:
    script = replace(m.script, statements=m.script.statements[start:]) if start else m.script
    total = len(m.script.statements)
    t0 = time.monotonic()

    async def record(applied: int, c: psycopg.AsyncConnection) -> None:
        await ledger.record(c, version=m.version, name=m.name, checksum=m.checksum, phase=phase, applied=applied,
                            total=total, duration_ms=int((time.monotonic() - t0) * 1000), service=service,
                            release=release, note=note)

    async def after(stmt: Statement, c: psycopg.AsyncConnection) -> None:
        applied = stmt.index + 1
        if m.script.transactional:
            if applied == total:          # the ledger row commits with the migration itself
                await record(applied, c)
        elif not stmt.in_transaction or applied == total or transaction_kind(stmt.node) == "end":
            await record(applied, c)

    if not script.statements:
        await record(total, conn)
        return
    await run_script(conn, script, lock_timeout=lock_timeout, hooks=StatementHooks(after=after))
    if not m.script.transactional:
        await record(total, conn)
