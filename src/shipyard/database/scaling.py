"""How big the rehearsal's copy is, and what its stall figures mean at production size. A
table the migration touches that is small enough is copied whole and its stalls are
measured; a bigger one is rehearsed on two samples and each statement's lock-holding time
is extrapolated to the live table's size (rows and bytes from pg_class / pg_stat), so a
4 ms index build on a 1,000-row sample is never printed as the stall of a 1M-row table."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, enums
from psycopg import sql

from . import locks
from .connect import connect
from .extrapolate import LINEAR, NLOGN, effective_rows, extrapolate
from .observe import CheckReport, StatementObservation, observe_apply
from .probes import PROBE_MODES, touched_tables
from .scratch import ScratchDatabase, display_name
from .statements import Script

FULL_COPY_MAX_ROWS = 100_000
"""A touched table up to this many rows (or check.sample_rows, if more) is copied whole."""
FULL_COPY_MAX_BYTES = 256 * 1024 * 1024
"""...and only while the touched tables together are no bigger than this: the copy lives
on the same server's disk, whose free space SQL cannot see."""
SMALL_SAMPLE_SHARE = 4
"""The small sample is this fraction of the large one: far enough apart to see the growth."""

WHOLE = 2**62
"""The row limit of a table copied whole (its size was an estimate: no limit really)."""

FULL = "full"
EXTRAPOLATED = "extrapolated"
SCHEMA_ONLY = "schema-only"

SIZE_SQL = """
SELECT n.nspname, c.relname, c.reltuples, c.relpages,
       pg_relation_size(c.oid) / current_setting('block_size')::int, coalesce(s.n_live_tup, 0),
       pg_table_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = to_regclass(%s) AND c.relkind = 'r'
"""


@dataclass(frozen=True)
class TableSize:
    rows: int
    bytes: int


@dataclass(frozen=True)
class Sizing:
    mode: str
    """FULL, EXTRAPOLATED or SCHEMA_ONLY."""
    live: dict[str, TableSize]
    """Touched table -> its size in the live database."""
    small: int = 0
    large: int = 0
    """Rows per table of the two copies (EXTRAPOLATED), or of the one copy (`large`)."""


def plan_sizing(live: dict[str, TableSize], sample_rows: int) -> Sizing:
    """Full copy when every touched table fits the bounds, else two samples below the biggest."""
    if sample_rows == 0:
        return Sizing(SCHEMA_ONLY, live)
    bound = max(sample_rows, FULL_COPY_MAX_ROWS)
    biggest = max((s.rows for s in live.values()), default=0)
    total_bytes = sum(s.bytes for s in live.values())
    if biggest <= bound and total_bytes <= FULL_COPY_MAX_BYTES:
        return Sizing(FULL, live, large=bound)
    large = max(2, min(bound, biggest // 2))
    return Sizing(EXTRAPOLATED, live, small=max(1, large // SMALL_SAMPLE_SHARE), large=large)


async def table_sizes(conn: psycopg.AsyncConnection, tables: list[tuple[str | None, str]]) -> dict[str, TableSize]:
    """Rows and bytes of each existing plain table. Rows as the planner counts them (the
    density reltuples / relpages of the last ANALYZE times the pages the table has now);
    pg_stat's live tuples before any ANALYZE (they can lag or double count around one);
    a count when neither knows."""
    sizes: dict[str, TableSize] = {}
    for schema, name in tables:
        ident = sql.Identifier(*([schema] if schema else []), name)
        row = await (await conn.execute(SIZE_SQL, (ident.as_string(conn),))).fetchone()
        if row is None:
            continue
        nsp, rel, reltuples, relpages, pages, live_tup, nbytes = row
        rows = round(reltuples * pages / relpages) if relpages > 0 and reltuples >= 0 else int(live_tup)
        if rows <= 0 and nbytes > 0:
            counted = await (await conn.execute(
                sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(nsp, rel)))).fetchone()
            rows = int(counted[0]) if counted else 0
        sizes[display_name(nsp, rel)] = TableSize(rows, int(nbytes))
    return sizes


def model_of(node: Any) -> str:
    """n log n for what sorts (an index build, a constraint backed by one, CLUSTER, REINDEX);
    linear for a scan or a rewrite."""
    if isinstance(node, ast.IndexStmt | ast.ClusterStmt | ast.ReindexStmt):
        return NLOGN
    if isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            if getattr(cmd, "def_", None) is not None and (
                    isinstance(cmd.def_, ast.IndexStmt)
                    or getattr(cmd.def_, "contype", None) in (enums.ConstrType.CONSTR_PRIMARY,
                                                               enums.ConstrType.CONSTR_UNIQUE,
                                                               enums.ConstrType.CONSTR_EXCLUSION)):
                return NLOGN
    return LINEAR


def _main_table(obs: StatementObservation, live: dict[str, TableSize]) -> str | None:
    known = [t for t in obs.locks if t in live]
    return max(known, key=lambda t: live[t].rows, default=None)


def scale_report(large: CheckReport, small: CheckReport | None, scripts: list[Script], sizing: Sizing,
                 rows_small: dict[str, int], rows_large: dict[str, int], sample_bytes: dict[str, TableSize]) -> None:
    """Fill in each statement's locks_held_live and the report's per-probe estimates, and fail
    the report when an estimate is over max_stall. `large` is the report of the copy kept."""
    nodes = {(s.source, st.line): st.node for s in scripts for st in s.statements}
    small_runs = {(o.source, o.line): o for o in (small.statements if small else [])}
    bases: dict[str, str] = {}
    for obs in large.statements:
        table = _main_table(obs, sizing.live)
        if table is None or sizing.mode == SCHEMA_ONLY:
            continue
        live, n2 = sizing.live[table], rows_large.get(table, 0)
        if sizing.mode != EXTRAPOLATED or n2 >= live.rows:
            obs.locks_held_live, obs.locks_held_basis = obs.locks_held, f"measured on the full copy of {table}"
            continue
        other, n1 = small_runs.get((obs.source, obs.line)), rows_small.get(table, 0)
        if other is None or other.error is not None or not 0 < n1 < n2:
            obs.locks_held_basis = f"not estimated: the small sample of {table} gave no second measurement"
            continue
        sb = sample_bytes.get(table)
        target = effective_rows(live.rows, live.bytes, n2, sb.bytes if sb else 0)
        fit = extrapolate(n1, other.locks_held, n2, obs.locks_held, target, model_of(nodes.get((obs.source, obs.line))))
        obs.locks_held_live = fit.seconds
        obs.locks_held_basis = (f"extrapolated from {n1:,} and {n2:,} rows to the live table's {live.rows:,} rows"
                                + (f" ({target:,} sample-sized rows by bytes)" if target > live.rows else "")
                                + f", {fit.model} fit")
        bases[table] = f"{table}: extrapolated from {n1:,} and {n2:,} rows to the live table's {live.rows:,} rows"
    large.basis = ("; ".join(bases[t] for t in sorted(bases)) if bases else
                   "schema only (check.sample_rows 0): no rows copied, stalls say nothing of production"
                   if sizing.mode == SCHEMA_ONLY else "measured on the full copy")
    _estimate_stalls(large, sizing)


def _estimate_stalls(report: CheckReport, sizing: Sizing) -> None:
    """Per probe: the longest live-size lock-holding time of the statements whose lock conflicts
    with its queries, with that statement's basis; else the copy's own probe figure, saying so."""
    for probe in report.probes:
        wanted = PROBE_MODES[probe.kind]
        holders = [o for o in report.statements
                   if any(locks.conflicts(m, wanted) for m in o.locks.get(probe.table, []))]
        unknown = next((o for o in holders if o.locks_held_live is None), None)
        worst = max((o for o in holders if o.locks_held_live is not None),
                    key=lambda o: o.locks_held_live or 0.0, default=None)
        if sizing.mode == SCHEMA_ONLY:
            seconds, basis = probe.longest_stall, report.basis
        elif unknown is not None:
            seconds, basis = probe.longest_stall, (f"the copy's probe only: {unknown.location} "
                                                   f"{unknown.locks_held_basis or 'not estimated'}")
        elif worst is not None and "extrapolated" in worst.locks_held_basis:
            seconds, basis = max(worst.locks_held_live or 0.0, probe.longest_stall), worst.locks_held_basis
        elif worst is not None or sizing.mode == FULL:
            seconds, basis = probe.longest_stall, "measured on the full copy"
        else:
            seconds, basis = probe.longest_stall, "measured on the copy (no statement's lock conflicts with these queries)"
        report.estimates.append({"table": probe.table, "kind": probe.kind, "seconds": round(seconds, 4),
                                 "basis": basis, "by": worst.location if worst else None,
                                 "measured_on_copy": probe.longest_stall})
        if worst is not None and "extrapolated" in basis and seconds > report.max_stall:
            verb = "reads" if probe.kind == "read" else "writes"
            report.reasons.append(f"{probe.table}: {verb} would be blocked about {seconds:.2f} s by "
                                  f"{worst.location} {worst.statement} ({basis}; max_stall {report.max_stall:g} s)")
            report.ok = False


SCALED_SETTINGS = {"min_parallel_table_scan_size": 0, "min_parallel_index_scan_size": 0,
                   "maintenance_work_mem": 1024}
"""Settings whose threshold is a size, scaled down with the sample (to at least the value in kB
given), so a sample sorts and parallelises as the live table would: an index build of a
table over min_parallel_table_scan_size gets parallel workers, one over maintenance_work_mem
sorts on disk."""


async def settle(conn: psycopg.AsyncConnection, tables: list[tuple[str | None, str]],
                 ratio: float = 1.0) -> dict[str, TableSize]:
    """Make a fresh copy behave like the live tables: VACUUM (ANALYZE) the touched ones (hint
    bits set, else the migration's first scan writes every page and is timed slower than
    production; visibility map and planner statistics there) and, for a sample `ratio` of
    the live size, the size thresholds of SCALED_SETTINGS scaled by it for later sessions.
    Returns the copied tables' sizes."""
    if ratio < 1.0:
        for name, floor_kb in SCALED_SETTINGS.items():
            row = await (await conn.execute("SELECT pg_size_bytes(current_setting(%s))", (name,))).fetchone()
            kb = max(floor_kb, int((row[0] if row else 0) * ratio / 1024))
            await conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(name), sql.Literal(f"{kb}kB")))
    sizes = await table_sizes(conn, tables)
    for schema, name in tables:
        ident = sql.Identifier(*([schema] if schema else []), name)
        row = await (await conn.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)",
                                        (ident.as_string(conn),))).fetchone()
        if row is not None and row[0] == "r":
            await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
    return sizes


def _copy_text(sizing: Sizing, sample_rows: int) -> str:
    if sizing.mode == SCHEMA_ONLY:
        return "schema only"
    touched = "each touched table whole" if sizing.mode == FULL else \
        f"large sample: up to {sizing.large:,} rows of each touched table"
    return f"{touched}, {sample_rows:,} rows of the others"


def _ratio(sizing: Sizing, copied: dict[str, int]) -> float:
    """Copied / live rows of the biggest touched table that was sampled (1.0: copied whole)."""
    sampled = [(t, s) for t, s in sizing.live.items() if s.rows > copied.get(t, 0) > 0]
    if sizing.mode != EXTRAPOLATED or not sampled:
        return 1.0
    table, size = max(sampled, key=lambda ts: ts[1].rows)
    return copied[table] / size.rows


@contextlib.asynccontextmanager
async def rehearsal_copy(url: str, scripts: list[Script], *, sample_rows: int, lock_timeout: float,
                         max_stall: float, log: Callable[[str], None] = lambda _m: None,
                         ) -> AsyncIterator[tuple[ScratchDatabase, CheckReport]]:
    """Apply `scripts` on a scratch copy sized by plan_sizing (and on a smaller one first when
    extrapolating); yield the copy kept (for the compatibility gate) and the scaled report.
    Every copy is dropped however the block ends."""
    async with await connect(url) as conn:
        live = await table_sizes(conn, touched_tables(scripts))
    sizing = plan_sizing(live, sample_rows)
    small_check: CheckReport | None = None
    rows_small: dict[str, int] = {}
    if sizing.mode == EXTRAPOLATED:
        async with ScratchDatabase.copy_of(url, sample_rows=sample_rows,
                                           table_rows=dict.fromkeys(live, sizing.small)) as small:
            log(f"scratch copy {small.name} ready (small sample: up to {sizing.small:,} rows of each touched "
                f"table, {sample_rows:,} of the others)")
            async with await connect(small.url) as conn:
                await settle(conn, touched_tables(scripts), _ratio(sizing, small.rows_copied))
            rows_small = dict(small.rows_copied)
            small_check = await observe_apply(small.url, scripts, lock_timeout=lock_timeout, max_stall=max_stall)
    async with ScratchDatabase.copy_of(url, sample_rows=sample_rows,
                                       table_rows=dict.fromkeys(live, WHOLE if sizing.mode == FULL
                                                                else sizing.large)) as scratch:
        log(f"scratch copy {scratch.name} ready ({_copy_text(sizing, sample_rows)})")
        async with await connect(scratch.url) as conn:
            sample_bytes = await settle(conn, touched_tables(scripts), _ratio(sizing, scratch.rows_copied))
        check = await observe_apply(scratch.url, scripts, lock_timeout=lock_timeout, max_stall=max_stall)
        scale_report(check, small_check, scripts, sizing, rows_small, dict(scratch.rows_copied), sample_bytes)
        yield scratch, check
