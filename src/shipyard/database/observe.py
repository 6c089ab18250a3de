"""What applying the migrations really does, measured on the scratch copy: per statement the
locks it took, how long it waited for them, the tables it rewrote and its duration; and, at
the same time, how long a small application-like workload on the touched tables was held
up. Linters guess the first half from the grammar; only running it shows the second, and
the second is what users of a zero-downtime deploy feel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import locks
from .connect import connect
from .execute import StatementFailed, StatementHooks, run_script
from .probes import (
    MAX_PROBED_TABLES,
    PROBE_MODES,
    PROBE_STATEMENT_TIMEOUT_MS,
    PROBE_STOP_GRACE,
    READ_PROBE,
    WRITE_PROBE,
    Probe,
    ProbeStats,
    Stall,
    probe_targets,
)
from .scratch import display_name
from .statements import Script, Statement, transaction_kind

MONITOR_INTERVAL = 0.005
USER_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""
OWN_LOCKS_SQL = """
SELECT l.relation, l.mode FROM pg_locks l
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
"""
MONITOR_SQL = "SELECT l.locktype, l.relation, l.mode, l.granted FROM pg_locks l WHERE l.pid = %s"


@dataclass
class StatementObservation:
    source: str
    line: int
    statement: str
    """Its first line."""
    in_transaction: bool
    started: float = 0.0
    """Seconds since the check began."""
    duration: float = 0.0
    locks: dict[str, list[str]] = field(default_factory=dict)
    """table -> lock modes it took or waited for, strongest first."""
    lock_wait: float = 0.0
    """Seconds it waited for a lock (sampled)."""
    locks_held: float = 0.0
    """Seconds from its start until its transaction ended and its locks were let go."""
    rewritten: list[str] = field(default_factory=list)
    locks_held_live: float | None = None
    """locks_held carried to the live table's size (see scaling.py); None: not estimated."""
    locks_held_basis: str = ""
    """Where locks_held_live comes from: measured on the full copy, or extrapolated from which sizes."""
    error: str | None = None
    sqlstate: str | None = None

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckReport:
    ok: bool
    statements: list[StatementObservation]
    probes: list[ProbeStats]
    reasons: list[str]
    lock_timeout: float
    max_stall: float
    duration: float
    unprobed: list[str] = field(default_factory=list)
    """Touched tables left without probes (over MAX_PROBED_TABLES)."""
    basis: str = "measured on the scratch copy"
    """What the stall figures are: measured on the full copy, or extrapolated (scaling.py)."""
    estimates: list[dict[str, Any]] = field(default_factory=list)
    """Per probed table and kind: the stall the live table would see and why (scaling.py)."""

    @property
    def failed_statement(self) -> StatementObservation | None:
        return next((s for s in self.statements if s.error is not None), None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, "lock_timeout": self.lock_timeout,
                "max_stall": self.max_stall, "duration": self.duration,
                "statements": [s.to_dict() for s in self.statements],
                "probes": [p.to_dict() for p in self.probes],
                "unprobed": self.unprobed, "basis": self.basis, "estimates": self.estimates}


@dataclass
class _Run:
    """One statement while it is observed: times on the loop's clock, raw lock evidence."""
    obs: StatementObservation
    statement: Statement
    start: float = 0.0
    end: float | None = None
    tx_end: float | None = None
    held: set[tuple[str, str]] = field(default_factory=set)
    """(table, mode) from pg_locks of its own backend, or sampled by the monitor."""
    waited: set[tuple[str, str]] = field(default_factory=set)
    last_sample: float | None = None
    files_before: dict[int, int] = field(default_factory=dict)
    locks_before: set[tuple[str, str]] = field(default_factory=set)

    def modes_on(self, table: str) -> set[str]:
        return {m for t, m in self.held | self.waited if t == table}


class _Observer:
    def __init__(self, conn: psycopg.AsyncConnection, names: dict[int, str], t0: float) -> None:
        self.conn = conn
        self.names = names
        """oid -> table, including tables dropped on the way (pg_class forgets them)."""
        self.t0 = t0
        self.runs: list[_Run] = []
        self.current: _Run | None = None
        self.source = ""

    async def user_tables(self, conn: psycopg.AsyncConnection | None = None) -> dict[int, int]:
        rows = await (await (conn or self.conn).execute(USER_TABLES_SQL)).fetchall()
        for oid, schema, name, _ in rows:
            self.names[oid] = display_name(schema, name)
        return {oid: filenode for oid, _, _, filenode in rows}

    async def own_locks(self, conn: psycopg.AsyncConnection) -> set[tuple[str, str]]:
        found = set()
        for relation, mode in await (await conn.execute(OWN_LOCKS_SQL)).fetchall():
            table = self.names.get(relation)
            with contextlib.suppress(ValueError):
                if table:
                    found.add((table, locks.from_pg_locks(mode)))
        return found

    async def before(self, statement: Statement) -> None:
        obs = StatementObservation(source=self.source, line=statement.line, statement=statement.first_line,
                                   in_transaction=statement.in_transaction)
        run = _Run(obs=obs, statement=statement)
        run.files_before = await self.user_tables()
        if statement.in_transaction:
            run.locks_before = await self.own_locks(self.conn)
        self.runs.append(run)
        run.start = time.monotonic()
        run.obs.started = round(run.start - self.t0, 4)
        self.current = run

    async def after(self, statement: Statement, conn: psycopg.AsyncConnection) -> None:
        run = self._finish()
        files_after = await self.user_tables(conn)
        run.obs.rewritten = sorted(self.names[oid] for oid, node in run.files_before.items()
                                   if oid in files_after and files_after[oid] != node and node != 0)
        if statement.in_transaction:
            run.held |= await self.own_locks(conn) - run.locks_before

    async def failed(self, statement: Statement, error: StatementFailed) -> None:
        run = self._finish()
        run.obs.error = error.server_message
        run.obs.sqlstate = error.sqlstate

    def _finish(self) -> _Run:
        run = self.current
        assert run is not None
        run.end = time.monotonic()
        run.obs.duration = round(run.end - run.start, 4)
        self.current = None
        return run

    def hooks(self, script: Script) -> StatementHooks:
        self.source = script.source
        return StatementHooks(before=self.before, after=self.after, failed=self.failed)

    async def monitor(self, conn: psycopg.AsyncConnection, pid: int, stop: asyncio.Event) -> None:
        """Samples pg_locks for the migration's backend: the only view of an autocommit
        statement's locks (they are gone when it returns) and of any statement's waits."""
        while not stop.is_set():
            run = self.current
            if run is not None:
                rows = await (await conn.execute(MONITOR_SQL, (pid,))).fetchall()
                now = time.monotonic()
                if self.current is run or (self.current is None and run.end is not None):
                    self._sample(run, rows, now)
            await asyncio.sleep(MONITOR_INTERVAL)

    def _sample(self, run: _Run, rows: list[tuple[Any, ...]], now: float) -> None:
        waiting = False
        for locktype, relation, mode, granted in rows:
            waiting = waiting or not granted
            table = self.names.get(relation) if locktype == "relation" else None
            if table is None:
                continue
            try:
                entry = (table, locks.from_pg_locks(mode))
            except ValueError:
                continue
            if not granted:
                run.waited.add(entry)
            elif not run.statement.in_transaction:   # in a transaction, earlier statements' locks show too
                run.held.add(entry)
        if waiting and run.last_sample is not None:
            run.obs.lock_wait = round(run.obs.lock_wait + now - run.last_sample, 4)
        run.last_sample = now

    def close_transactions(self, runs: list[_Run], script: Script, script_end: float) -> None:
        """When each statement's locks were let go: at the end of its transaction."""
        block: list[_Run] = []
        for run in runs:
            end = run.end if run.end is not None else script_end
            if script.transactional:
                run.tx_end = script_end
            elif run.statement.in_transaction:
                block.append(run)
                if transaction_kind(run.statement.node) == "end":
                    for member in block:
                        member.tx_end = end
                    block = []
            else:
                run.tx_end = end
        for member in block:
            member.tx_end = script_end

    def finish_observations(self) -> None:
        for run in self.runs:
            table_modes: dict[str, set[str]] = {}
            for table, mode in run.held | run.waited:
                table_modes.setdefault(table, set()).add(mode)
            run.obs.locks = {table: sorted(modes, key=locks.MODES.index, reverse=True)
                             for table, modes in sorted(table_modes.items())}
            if run.tx_end is not None and run.obs.locks:
                run.obs.locks_held = round(max(0.0, run.tx_end - run.start), 4)

    def culprits(self, table: str, kind: str, stall: Stall) -> list[_Run]:
        """The statements that held the probe up: those holding (or queueing for) a conflicting
        lock on its table while it waited; else whatever statement was running then."""
        wanted = PROBE_MODES[kind]
        holding = [r for r in self.runs
                   if any(locks.conflicts(m, wanted) for m in r.modes_on(table))
                   and r.start < stall.end and stall.start < (r.tx_end or r.end or stall.end)]
        if holding:
            return holding
        return [r for r in self.runs if r.start < stall.end and stall.start < (r.end or stall.end)]


async def _open(stack: contextlib.AsyncExitStack, url: str, name: str) -> psycopg.AsyncConnection:
    conn = await connect(url, application_name=name)
    stack.push_async_callback(conn.close)
    return conn


async def observe_apply(scratch_url: str, scripts: list[Script], *, lock_timeout: float, max_stall: float,
                        probe_interval: float = 0.02) -> CheckReport:
    """Apply `scripts` to the scratch database through run_script (as the deploy will), with
    probes reading and writing every touched table, and judge: no statement may fail and no
    probe may wait longer than `max_stall` seconds."""
    t0 = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        migration = await _open(stack, scratch_url, "shipyard-check")
        monitor_conn = await _open(stack, scratch_url, "shipyard-check-monitor")
        observer = _Observer(migration, {}, t0)
        await observer.user_tables()
        targets = await probe_targets(migration, scripts)
        unprobed = [t for t, _ in targets[MAX_PROBED_TABLES:]]
        probes: list[Probe] = []
        for table, ident in targets[:MAX_PROBED_TABLES]:
            probes.append(Probe(ProbeStats(table, "read"), sql.SQL(READ_PROBE).format(ident)))
            probes.append(Probe(ProbeStats(table, "write"), sql.SQL(WRITE_PROBE).format(ident)))
        probe_conns = [await _open(stack, scratch_url, "shipyard-check-probe") for _ in probes]
        for conn in probe_conns:
            await conn.execute(f"SET statement_timeout = {PROBE_STATEMENT_TIMEOUT_MS}")

        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(c, stop, probe_interval))
                 for p, c in zip(probes, probe_conns, strict=True)]
        tasks.append(asyncio.create_task(observer.monitor(monitor_conn, migration.info.backend_pid, stop)))
        try:
            await asyncio.sleep(max(0.05, 3 * probe_interval))       # probes warm, before the first statement
            for script in scripts:
                first = len(observer.runs)
                try:
                    await run_script(migration, script, lock_timeout=lock_timeout,
                                     hooks=observer.hooks(script))
                except StatementFailed:
                    observer.close_transactions(observer.runs[first:], script, time.monotonic())
                    break
                observer.close_transactions(observer.runs[first:], script, time.monotonic())
            await asyncio.sleep(2 * probe_interval)
        finally:
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=PROBE_STOP_GRACE + 10 * probe_interval)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    observer.finish_observations()
    return _judge(observer, probes, unprobed, lock_timeout, max_stall, time.monotonic() - t0)


def _describe(run: _Run, table: str) -> str:
    strongest = locks.strongest(run.modes_on(table))
    notes = ([strongest] if strongest else []) + (["rewrite"] if table in run.obs.rewritten else [])
    return f"{run.obs.location} {run.obs.statement}" + (f" ({', '.join(notes)})" if notes else "")


def _judge(observer: _Observer, probes: list[Probe], unprobed: list[str], lock_timeout: float,
           max_stall: float, duration: float) -> CheckReport:
    reasons: list[str] = []
    for run in observer.runs:
        if run.obs.error is not None:
            why = f"{run.obs.location} failed: {run.obs.error}"
            if run.obs.sqlstate:
                why += f" [{run.obs.sqlstate}]"
            if run.obs.sqlstate == "55P03":
                why += f" (waited longer than lock_timeout {lock_timeout:g} s)"
            reasons.append(why)
    for probe in probes:
        stats = probe.stats
        blockers: dict[str, _Run] = {}
        too_long: dict[tuple[str, ...], tuple[float, list[_Run]]] = {}     # per culprit set: its worst stall
        stalls = list(probe.stalls)
        if probe.worst is not None and probe.worst not in stalls:      # max_stall below BLOCKED_FLOOR
            stalls.append(probe.worst)
        for stall in stalls:
            culprits = observer.culprits(stats.table, stats.kind, stall)
            for run in culprits:
                blockers.setdefault(run.obs.location, run)
            key = tuple(r.obs.location for r in culprits)
            if stall.seconds > max_stall and stall.seconds > too_long.get(key, (0.0, []))[0]:
                too_long[key] = (stall.seconds, culprits)
        stats.blocked_by = list(blockers)
        verb = "reads" if stats.kind == "read" else "writes"
        for seconds, culprits in sorted(too_long.values(), key=lambda v: v[1][0].start if v[1] else 0.0):
            by = ("by " + "; ".join(_describe(r, stats.table) for r in culprits)) if culprits \
                else "while no migration statement ran"
            reasons.append(f"{stats.table}: {verb} blocked {seconds:.2f} s {by} (max_stall {max_stall:g} s)")
    return CheckReport(ok=not reasons, statements=[r.obs for r in observer.runs],
                       probes=[p.stats for p in probes], reasons=reasons, lock_timeout=lock_timeout,
                       max_stall=max_stall, duration=round(duration, 3), unprobed=unprobed)
