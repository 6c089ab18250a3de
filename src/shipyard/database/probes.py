"""The probe workload of `db check`: per touched table one reader and one writer, looping
like a tiny application, each query timed. The longest wait is what a user of the
service would have felt while the migration held its locks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from pglast import ast
from psycopg import sql

from . import locks
from .scratch import display_name
from .statements import Script

BLOCKED_FLOOR = 0.05
"""A probe slower than this was held up, not just slow."""
PROBE_STATEMENT_TIMEOUT_MS = 120_000
MAX_PROBED_TABLES = 16
"""Two connections per table: keep well under max_connections."""
PROBE_STOP_GRACE = 5.0
PROBE_MODES = {"read": locks.ACCESS_SHARE, "write": locks.ROW_EXCLUSIVE}

READ_PROBE = "SELECT 1 FROM {} LIMIT 1"
WRITE_PROBE = "DELETE FROM {} WHERE false"
"""Takes ROW EXCLUSIVE like any write and changes nothing; names no column, so it keeps
working when the migration renames or drops one."""
@dataclass
class ProbeStats:
    table: str
    kind: str
    """'read' (SELECT) or 'write' (a row-writing statement that changes nothing)."""
    count: int = 0
    longest_stall: float = 0.0
    """The slowest probe, seconds."""
    blocked_total: float = 0.0
    """Sum of the probes slower than BLOCKED_FLOOR."""
    errors: int = 0
    last_error: str | None = None
    blocked_by: list[str] = field(default_factory=list)
    """file:line of the statements that held it up."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stall:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def touched_tables(scripts: list[Script]) -> list[tuple[str | None, str]]:
    """(schema, name) of every relation the statements name, in order of first mention."""
    seen: dict[tuple[str | None, str], None] = {}
    for script in scripts:
        for statement in script.statements:
            for rv in _range_vars(statement.node):
                seen.setdefault((rv.schemaname or None, rv.relname), None)
    return list(seen)


def _range_vars(node: Any) -> Iterator[ast.RangeVar]:
    if isinstance(node, ast.RangeVar):
        yield node
    if isinstance(node, ast.Node):
        for name in type(node).__slots__:
            yield from _range_vars(getattr(node, name, None))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _range_vars(item)


class Probe:
    def __init__(self, stats: ProbeStats, query: sql.Composable) -> None:
        self.stats = stats
        self.query = query
        self.stalls: list[Stall] = []
        self.worst: Stall | None = None

    async def run(self, conn: psycopg.AsyncConnection, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                await conn.execute(self.query)
            except psycopg.Error as e:
                self.stats.errors += 1
                self.stats.last_error = " ".join(str(e).split())
                if conn.broken:
                    return
            end = time.monotonic()
            latency = end - start
            self.stats.count += 1
            if self.worst is None or latency > self.worst.seconds:
                self.worst = Stall(start, end)
                self.stats.longest_stall = round(latency, 4)
            if latency > BLOCKED_FLOOR:
                self.stats.blocked_total = round(self.stats.blocked_total + latency, 4)
                self.stalls.append(Stall(start, end))
            await asyncio.sleep(interval)


async def probe_targets(conn: psycopg.AsyncConnection,
                         scripts: list[Script]) -> list[tuple[str, sql.Identifier]]:
    targets: dict[int, tuple[str, sql.Identifier]] = {}
    for schema, name in touched_tables(scripts):
        text = sql.Identifier(*([schema] if schema else []), name).as_string(conn)
        row = await (await conn.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')", (text,))).fetchone()
        if row is not None:
            targets.setdefault(row[0], (display_name(row[1], row[2]), sql.Identifier(row[1], row[2])))
    return list(targets.values())
