"""The database side of the migration benchmark: throwaway databases that never outlive it,
the big table, application clients that keep running short queries on it while a migration
runs, and what their latencies say. A stall is what a user of the application would see:
one query that takes as long as the lock it waits behind. Kept apart from
migration_stall.py so that the script is only its figure."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from shipyard.database.connect import connect, with_database
from shipyard.database.rehearsal import summary
from shipyard.database.scaling import rehearsal_copy
from shipyard.database.statements import Script
from shipyard.spec.models import DatabaseCheckSpec

# -- databases -------------------------------------------------------------------------------


DROP = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")


class Databases:
    """Every database the benchmark creates, so that none outlives it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: set[str] = set()
        self.prefix = f"sybench_mig_{uuid.uuid4().hex[:8]}"

    async def create(self, suffix: str) -> str:
        name = f"{self.prefix}_{suffix}"
        conn = await connect(self.admin_url)
        try:
            self.names.add(name)
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def drop(self, name: str) -> None:
        conn = await connect(self.admin_url)
        try:
            await conn.execute(DROP.format(sql.Identifier(name)))
            self.names.discard(name)
        finally:
            await conn.close()

    def drop_remaining(self) -> None:
        """Last resort once the event loop is gone (Ctrl-C, a crash)."""
        if not self.names:
            return
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            for name in sorted(self.names):
                conn.execute(DROP.format(sql.Identifier(name)))
        self.names.clear()


FILL = """
CREATE TABLE accounts (id bigint NOT NULL, owner text NOT NULL, balance numeric,
                       opened_at timestamptz NOT NULL DEFAULT now(), note text);
INSERT INTO accounts (id, owner, balance, opened_at, note)
SELECT i, 'owner-' || (i * 7919 % 100003), (i % 100000) / 100.0, now() - i * interval '1 minute',
       'account ' || i
FROM generate_series(1::bigint, {rows}) AS i;
ALTER TABLE accounts ADD PRIMARY KEY (id);
"""


async def fill_table(url: str, rows: int) -> float:
    t0 = time.monotonic()
    conn = await connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(FILL.format(rows=int(rows)).encode())
        await conn.execute("VACUUM ANALYZE accounts")
        await conn.execute("CHECKPOINT")       # the fill's dirty pages are not written during the run
    finally:
        await conn.close()
    return time.monotonic() - t0


END_STATE = """
SELECT (SELECT count(*) FROM accounts),
       (SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_owner_idx'::regclass),
       (SELECT count(*) FROM accounts WHERE token IS NULL),
       (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a
          ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'accounts'::regclass
          AND a.attname = 'token'),
       (SELECT attnotnull FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'balance'),
       (SELECT count(*) FROM pg_constraint WHERE conrelid = 'accounts'::regclass AND contype = 'c')
"""


async def end_state(url: str) -> dict[str, Any]:
    """What both runs must leave behind: the same schema, every row backfilled."""
    conn = await connect(url)
    try:
        row = await (await conn.execute(END_STATE)).fetchone()
    finally:
        await conn.close()
    assert row is not None
    rows, valid, null_tokens, default, not_null, checks = row
    return {"rows": rows, "owner_index_valid": valid, "token_nulls": null_tokens, "token_default": default,
            "balance_not_null": not_null, "check_constraints": checks,
            "complete": bool(valid) and null_tokens == 0 and default == "random()" and bool(not_null)
            and checks == 0}


# -- the application -------------------------------------------------------------------------

APP_NAME = "shipyard-bench-app"
STATEMENT_TIMEOUT = "30s"
"""Generous: a query held up by a migration should show as latency, not as an error."""
SELECT = "SELECT id, owner, balance FROM accounts WHERE id = %s"
# explicit columns: a cached plan of SELECT * fails once a column is added ("cached plan must
# not change result type"), an application bug the benchmark is not about
UPDATE = "UPDATE accounts SET balance = balance + 1 WHERE id = %s"


@dataclass(frozen=True)
class Query:
    kind: str                 # select | update
    start: float              # time.monotonic() just before it was sent
    latency: float            # seconds until its answer (or its error)
    error: str | None         # SQLSTATE and message, None if it succeeded


class AppWorkload:
    """`clients` connections, each looping: a point SELECT, a point UPDATE (each its own
    autocommit transaction, as a web request would do them), then `pause` seconds."""

    def __init__(self, url: str, rows: int, clients: int = 8, pause: float = 0.01, seed: int = 1) -> None:
        self.url, self.rows, self.clients, self.pause = url, rows, clients, pause
        self.queries: list[Query] = []
        self.reconnects = 0
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: list[psycopg.AsyncConnection] = []
        self.started = self.stopped = 0.0

    async def start(self) -> None:
        """Connects every client first, so a refused connection fails the run before it starts."""
        for _ in range(self.clients):
            self._conns.append(await self._connect())
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        """Lets each client finish the query it is in (stalled ones included), then closes it."""
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    await conn.close()
            self.stopped = time.monotonic()

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name=APP_NAME, connect_timeout=5,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT}")

    async def _client(self, i: int) -> None:
        while not self._stop.is_set():
            for kind, query in (("select", SELECT), ("update", UPDATE)):
                key = self._rng.randint(1, self.rows)
                t0 = time.monotonic()
                error = None
                try:
                    await self._conns[i].execute(query, (key,))
                except psycopg.Error as e:
                    error = f"{e.sqlstate or type(e).__name__}: {' '.join(str(e).split())[:200]}"
                self.queries.append(Query(kind, t0, time.monotonic() - t0, error))
                if error is not None and self._conns[i].closed:
                    with contextlib.suppress(psycopg.Error):
                        self._conns[i] = await self._connect()
                        self.reconnects += 1
            if self.pause:
                await asyncio.sleep(self.pause)


class WaitSampler:
    """What the application's backends wait on, sampled from pg_stat_activity: tells a lock
    wait (the migration's doing) from a WAL flush or an I/O wait (the machine's)."""

    QUERY = """SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = %s AND state = 'active'
               AND wait_event_type IS NOT NULL AND wait_event_type <> 'Client'"""

    def __init__(self, url: str, every: float = 0.02) -> None:
        self.url, self.every = url, every
        self.ticks: list[float] = []
        self.samples: list[tuple[float, str]] = []
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._conn = await connect(self.url, application_name="shipyard-bench-sampler")
        self._task = asyncio.create_task(self._run(self._conn))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def _run(self, conn: psycopg.AsyncConnection) -> None:
        while True:
            rows = await (await conn.execute(self.QUERY, (APP_NAME,))).fetchall()
            now = time.monotonic()
            self.ticks.append(now)
            self.samples.extend((now, str(r[0])) for r in rows)
            await asyncio.sleep(self.every)

    def shares(self, t0: float, t1: float, clients: int) -> dict[str, float]:
        """Wait event -> share of the clients' time between t0 and t1 spent waiting on it."""
        ticks = sum(1 for t in self.ticks if t0 <= t <= t1)
        counts: dict[str, int] = {}
        for t, event in self.samples:
            if t0 <= t <= t1:
                counts[event] = counts.get(event, 0) + 1
        total = ticks * clients or 1
        return {e: round(n / total, 4) for e, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank: a value that was really observed."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def latency_summary(queries: list[Query], threshold: float) -> dict[str, Any]:
    """Milliseconds, over all queries and per kind; `over_threshold` counts queries slower than it."""
    def one(qs: list[Query]) -> dict[str, Any]:
        lat = sorted(q.latency for q in qs)
        ms = {name: None if v is None else round(v * 1000, 2)
              for name, v in (("p50", percentile(lat, 0.5)), ("p99", percentile(lat, 0.99)),
                              ("p999", percentile(lat, 0.999)), ("max", lat[-1] if lat else None))}
        return {"queries": len(qs), "errors": sum(1 for q in qs if q.error), "latency_ms": ms,
                "over_threshold": sum(1 for v in lat if v > threshold)}
    out = one(queries)
    out["by_kind"] = {k: one([q for q in queries if q.kind == k]) for k in ("select", "update")}
    return out


def slowest(queries: list[Query], origin: float, n: int = 10) -> list[dict[str, Any]]:
    return [{"kind": q.kind, "start_s": round(q.start - origin, 3), "latency_ms": round(q.latency * 1000, 2),
             "error": q.error} for q in sorted(queries, key=lambda q: q.latency, reverse=True)[:n]]


def timeline(queries: list[Query], origin: float, step: float = 0.5) -> list[dict[str, Any]]:
    """Per `step` seconds by start time: queries started, their longest latency, errors."""
    bins: dict[int, list[Query]] = {}
    for q in queries:
        bins.setdefault(int((q.start - origin) // step), []).append(q)
    return [{"t_s": round(k * step, 3), "queries": len(v),
             "max_ms": round(max(q.latency for q in v) * 1000, 1), "errors": sum(1 for q in v if q.error)}
            for k, v in sorted(bins.items())]


# -- the rehearsal's figure against the real one ------------------------------------------------

async def rehearsed_stall(url: str, script: Script, lock_timeout: float) -> dict[str, Any]:
    """What `db check` (default settings) reports as the stall of the table's writes."""
    messages: list[str] = []
    t0 = time.monotonic()
    async with rehearsal_copy(url, [script], sample_rows=DatabaseCheckSpec().sample_rows,
                              lock_timeout=lock_timeout, max_stall=3600.0, log=messages.append) as (_s, check):
        pass
    writes = next(e for e in check.estimates if e["kind"] == "write")
    return {"seconds": writes["seconds"], "basis": writes["basis"], "measured_on_copy": writes["measured_on_copy"],
            "summary": summary(check), "rehearsal_s": round(time.monotonic() - t0, 2), "log": messages}


def stall_in_window(queries: list[Query], start: float, end: float, kind: str = "update") -> float | None:
    """How long the file held up a `kind` query: the longest of those that began while it ran,
    each counted up to the file's end (a query still waiting then waits on the next file, which
    took the lock before it in the naive run: that part is the next file's stall)."""
    inside = [min(q.latency, end - q.start) for q in queries
              if q.kind == kind and start <= q.start <= end and q.error is None]
    return max(inside, default=None)
