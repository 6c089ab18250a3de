"""Running a declared backfill (backfill_spec.py): batches cut on the key, each its own short
transaction under SET LOCAL lock_timeout / statement_timeout, so the running release's writes
wait at most one batch. How far it got (the last key done) is written in the SAME transaction
as the batch, in table shipyard_backfills next to the ledger: a crash resumes after the last
committed batch and no row is updated twice, whatever the SET does. Before each batch the
replicas' replay lag is read, and the backfill waits (bounded) while it is above max_lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .backfill_spec import Backfill
from .connect import DatabaseError

TABLE = "shipyard_backfills"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    version text PRIMARY KEY,
    target text NOT NULL,
    key_column text NOT NULL,
    last_key text,
    stop_key text,
    rows_done bigint NOT NULL DEFAULT 0,
    batches integer NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""
RETRYABLE = ("55P03", "57014")        # lock_timeout, statement_timeout: the batch rolled back, try again
LagReader = Callable[[psycopg.AsyncConnection], Awaitable[float | None]]
Report = Callable[[str, "Progress"], None]
"""Progress of a backfill: the line to show and the figures (the deploy makes an event of both)."""


class BackfillFailed(DatabaseError):
    """A backfill stopped; every batch committed before it stays done and recorded."""


class ReplicaLagging(BackfillFailed):
    """The replicas stayed behind by more than max_lag for longer than the backfill may wait."""


async def read_progress(conn: psycopg.AsyncConnection) -> dict[str, dict[str, Any]]:
    """version -> how far each backfill got (for `db status` and the plan); {} before the first one."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return {}
    cur = await conn.execute(f"SELECT version, key_column, last_key, stop_key, rows_done, batches, done FROM {TABLE}")
    return {r[0]: {"key": r[1], "last_key": r[2], "stop_key": r[3], "rows_done": int(r[4]), "batches": int(r[5]),
                   "done": bool(r[6])} for r in await cur.fetchall()}


async def replica_lag(conn: psycopg.AsyncConnection) -> float | None:
    """Seconds the most lagging replica is behind in replay (pg_stat_replication on the primary);
    None when no replica is attached. A caught-up idle replica shows a NULL replay_lag: 0."""
    cur = await conn.execute("SELECT count(*), max(extract(epoch FROM replay_lag)) FROM pg_stat_replication")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    return float(row[1] or 0.0)


async def wait_for_replicas(conn: psycopg.AsyncConnection, max_lag: float, *, max_wait: float,
                            read_lag: LagReader = replica_lag, log: Callable[[str], None] = lambda _m: None,
                            sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                            clock: Callable[[], float] = time.monotonic) -> float:
    """Return once the lag is at most max_lag (or there is no replica); the seconds waited.
    Raises ReplicaLagging after max_wait: a replica that never catches up is a problem to look at."""
    t0 = clock()
    logged = False
    while True:
        lag = await read_lag(conn)
        waited = clock() - t0
        if lag is None or lag <= max_lag:
            return waited
        if waited >= max_wait:
            raise ReplicaLagging(
                f"replication lag stayed {lag:.1f}s, above max_lag {max_lag:g}s, for {waited:.0f}s",
                "the backfill stopped between batches (everything done so far is committed and recorded); find "
                "why the replica is behind, then deploy again: the backfill resumes where it stopped")
        if not logged:
            log(f"replication lag {lag:.1f}s is above max_lag {max_lag:g}s: waiting (at most {max_wait:g}s)")
            logged = True
        await sleep(min(max(max_lag / 4, 0.2), 2.0, max(max_wait - waited, 0.01)))


@dataclass
class Progress:
    rows_done: int = 0
    estimated_total: int = 0
    batches: int = 0
    seconds: float = 0.0
    lag_waits: float = 0.0
    last_key: str | None = None

    @property
    def rate(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rows_done": self.rows_done, "estimated_total": max(self.estimated_total, self.rows_done),
                "batches": self.batches, "seconds": round(self.seconds, 3), "rows_per_second": round(self.rate, 1),
                "lag_waits": round(self.lag_waits, 3), "last_key": self.last_key}

    def line(self, label: str) -> str:
        total = max(self.estimated_total, self.rows_done)
        pct = f" ({100 * self.rows_done / total:.0f}%)" if total else ""
        return (f"{label}: backfill {self.rows_done} of ~{total} rows{pct}, {self.batches} batches, "
                f"{self.rate:.0f} rows/s")


@dataclass(frozen=True)
class Target:
    """The resolved table and key, as SQL pieces."""

    table: sql.Composable
    key: str
    key_type: str
    indexed: bool = True
    """An index starts with the key: without one every batch scans and sorts the table."""


async def _resolve(conn: psycopg.AsyncConnection, b: Backfill) -> Target:
    table = sql.Identifier(*b.table)
    cur = await conn.execute("SELECT to_regclass(%s)::oid", (table.as_string(conn),))
    row = await cur.fetchone()
    if not row or row[0] is None:
        raise BackfillFailed(f"{b.source}: table {b.table_text} does not exist",
                             "create it in an earlier migration, or fix table: in the backfill file")
    oid = row[0]
    key = b.key
    if key is None:
        cur = await conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY (i.indkey) WHERE i.indrelid = %s AND i.indisprimary", (oid,))
        cols = [r[0] for r in await cur.fetchall()]
        if len(cols) != 1:
            raise BackfillFailed(f"{b.source}: {b.table_text} has " + ("no primary key" if not cols else
                                 f"a primary key of {len(cols)} columns ({', '.join(cols)})"),
                                 "name the column to cut batches on with key: (NOT NULL, ideally indexed)")
        key = cols[0]
    cur = await conn.execute("SELECT format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
                             "WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped", (oid, key))
    col = await cur.fetchone()
    if col is None:
        raise BackfillFailed(f"{b.source}: {b.table_text} has no column {key}", "fix key: in the backfill file")
    if not col[1]:
        raise BackfillFailed(f"{b.source}: key column {b.table_text}.{key} may be NULL: rows with a NULL key "
                             "would never be backfilled", "cut batches on a NOT NULL column (the primary key)")
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                             "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND a.attname = %s)", (oid, key))
    indexed = await cur.fetchone()
    return Target(table=table, key=key, key_type=str(col[0]), indexed=bool(indexed and indexed[0]))


def _where(t: Target, b: Backfill, last: str | None, upper: str | None) -> sql.Composed:
    """Keys as literals, never parameters: the user's SET / WHERE may hold a '%' (LIKE 'a%')."""
    key = sql.Identifier(t.key)
    parts: list[sql.Composable] = []
    for op, value in ((">", last), ("<=", upper)):
        if value is not None:
            parts.append(sql.SQL("{} {} CAST({} AS {})").format(key, sql.SQL(op), sql.Literal(value),
                                                                 sql.SQL(t.key_type)))
    # the user's text on lines of its own: a trailing `-- comment` in it ends at the newline
    parts.append(sql.SQL("(\n{}\n)").format(sql.SQL(b.where or "true")))
    return sql.SQL(" AND ").join(parts)


async def _estimate(conn: psycopg.AsyncConnection, t: Target, b: Backfill, last: str | None, stop: str) -> int:
    """The planner's estimate of the rows still to do (no scan of a big table for a progress bar).
    A table never analyzed has no statistics to estimate from: ANALYZE (a sample; it blocks no
    reads or writes) gives it some first."""
    cur = await conn.execute("SELECT last_analyze IS NULL AND last_autoanalyze IS NULL FROM pg_stat_user_tables "
                             "WHERE relid = to_regclass(%s)", (t.table.as_string(conn),))
    never = await cur.fetchone()
    if never and never[0]:
        with contextlib.suppress(psycopg.Error):         # only the estimate is worse without it
            async with conn.transaction():
                await conn.execute("SELECT set_config('lock_timeout', '1s', true)")
                await conn.execute(sql.SQL("ANALYZE {}").format(t.table))
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(t.table, _where(t, b, last, stop))
    cur = await conn.execute(query)
    row = await cur.fetchone()
    plan = row[0] if row else None
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"]) if plan else 0


async def _one_batch(conn: psycopg.AsyncConnection, version: str, t: Target, b: Backfill, lock_timeout: float,
                     record: Callable[[psycopg.AsyncConnection, bool], Awaitable[None]]) -> tuple[int, str | None]:
    """One transaction: read the progress, find the batch's upper key, update, record. (rows, last key);
    rows -1 when nothing was left (the backfill is then recorded as done)."""
    async with conn.transaction():
        for setting, seconds in (("lock_timeout", lock_timeout), ("statement_timeout", b.statement_timeout)):
            await conn.execute("SELECT set_config(%s, %s, true)", (setting, f"{max(1, round(seconds * 1000))}ms"))
        cur = await conn.execute(f"SELECT last_key, stop_key FROM {TABLE} WHERE version = %s FOR UPDATE", (version,))
        row = await cur.fetchone()
        assert row is not None
        last, stop = row
        bound, found = None, 0
        if stop is not None:                # None: the table was empty when the backfill started
            find = sql.SQL("SELECT (array_agg(k::text ORDER BY k DESC))[1], count(*) FROM (SELECT {key} AS k "
                           "FROM {table} WHERE {where} ORDER BY {key} LIMIT {n}) AS batch").format(
                key=sql.Identifier(t.key), table=t.table, where=_where(t, b, last, stop), n=sql.Literal(b.batch_size))
            cur = await conn.execute(find)
            bound, found = (await cur.fetchone()) or (None, 0)
        if not found:
            await conn.execute(f"UPDATE {TABLE} SET done = true, updated_at = now() WHERE version = %s", (version,))
            await record(conn, True)
            return -1, last
        update = sql.SQL("UPDATE {table} SET\n{sets}\nWHERE {where}").format(
            table=t.table, sets=sql.SQL(b.set), where=_where(t, b, last, bound))
        cur = await conn.execute(update)
        rows = max(cur.rowcount, 0)
        await conn.execute(f"UPDATE {TABLE} SET last_key = %s, rows_done = rows_done + %s, batches = batches + 1, "
                           "updated_at = now() WHERE version = %s", (bound, rows, version))
        await record(conn, False)
        return rows, bound


async def run_backfill(conn: psycopg.AsyncConnection, *, version: str, label: str, backfill: Backfill,
                       lock_timeout: float, retries: int, backoff: Callable[[int], float],
                       record: Callable[[psycopg.AsyncConnection, bool], Awaitable[None]],
                       log: Callable[[str], None] = lambda _m: None, progress: Report | None = None,
                       sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, read_lag: LagReader = replica_lag,
                       max_lag_wait: float = 300.0, report_every: float = 2.0) -> Progress:
    """Run (or resume) the backfill to the end on `conn` (autocommit, holding the migration lock).
    `record(conn, done)` writes the ledger row inside each batch's transaction; `progress` gets the
    start, a report every `report_every` seconds and the end (without it they go to `log`)."""
    b = backfill
    report = progress or (lambda line, _p: log(line))
    t = await _resolve(conn, b)
    if not t.indexed:
        log(f"{label}: warning: no index of {b.table_text} starts with {t.key}: every batch scans the whole table "
            f"to find its {b.batch_size} rows; cut batches on an indexed column (key:) for a big table")
    await conn.execute(DDL)
    # the largest key now is where it stops, kept across a resume: rows inserted from here on are
    # written by the application (in the new form), and a busy table still has an end
    cur = await conn.execute(sql.SQL("SELECT {key}::text AS stop_key FROM {table} ORDER BY {key} DESC LIMIT 1").format(
        key=sql.Identifier(t.key), table=t.table))
    top = await cur.fetchone()
    await conn.execute(f"INSERT INTO {TABLE} (version, target, key_column, stop_key) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (version) DO UPDATE SET target = EXCLUDED.target, key_column = EXCLUDED.key_column, "
                       f"stop_key = EXCLUDED.stop_key WHERE {TABLE}.batches = 0",      # nothing done yet: start afresh
                       (version, b.table_text, t.key, top[0] if top else None))
    cur = await conn.execute(f"SELECT last_key, rows_done, batches, done, stop_key FROM {TABLE} WHERE version = %s",
                             (version,))
    row = await cur.fetchone()
    assert row is not None
    p = Progress(rows_done=int(row[1]), batches=int(row[2]), last_key=row[0])
    if row[3]:
        await record(conn, True)          # done but not recorded (a crash between the two cannot happen; a hand edit)
        return p
    if row[4] is not None:
        p.estimated_total = p.rows_done + await _estimate(conn, t, b, p.last_key, row[4])
    resumed = f", resuming after {t.key} {p.last_key} ({p.rows_done} rows already done)" if p.last_key else ""
    report(f"{label}: backfill {b.table_text} in batches of {b.batch_size} on {t.key} up to {row[4]}, "
           f"~{p.estimated_total} rows{resumed}", p)
    t0, last_report, attempt = time.monotonic(), 0.0, 0
    while True:
        p.lag_waits += await wait_for_replicas(conn, b.max_lag, max_wait=max_lag_wait, read_lag=read_lag, log=log,
                                               sleep=sleep)
        try:
            rows, last = await _one_batch(conn, version, t, b, lock_timeout, record)
        except psycopg.Error as e:
            message = e.diag.message_primary or str(e)
            if e.sqlstate in RETRYABLE and attempt < retries:
                wait = backoff(attempt)
                attempt += 1
                log(f"{label}: batch after {t.key} {p.last_key} gave up ({message}); try {attempt + 1} of "
                    f"{retries + 1} in {wait:g}s")
                await sleep(wait)
                continue
            raise BackfillFailed(
                f"backfill {label} of {b.table_text} failed after {p.rows_done} rows: {message}"
                + (f" [{e.sqlstate}]" if e.sqlstate else ""),
                f"the {p.batches} batch(es) before it are committed and recorded (last {t.key} {p.last_key}); "
                "fix the cause and deploy again: it resumes there") from None
        attempt = 0
        p.seconds = time.monotonic() - t0
        if rows < 0:
            report(p.line(label) + ": done", p)
            return p
        p.rows_done, p.batches, p.last_key = p.rows_done + rows, p.batches + 1, last
        if p.seconds - last_report >= report_every:
            last_report = p.seconds
            report(p.line(label), p)
        if b.pause > 0:
            await sleep(b.pause)
