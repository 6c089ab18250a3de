"""The state store on SQLite (WAL): one file in the state directory, one writer (the daemon).
Implements the engine's Store port (shipyard.engine.ports.Store).

Rows hold JSON documents for the evolving parts (slots, rollout state) so that the
schema stays small and a rollout is stored exactly as the state machine sees it.

Every call is synchronous on the event loop, and that is safe because none of them can
wait: the connection (state/faults.py) gives up on a foreign lock after a few ms and
turns disk-full, locked, read-only and I/O failures into `StoreUnavailable`. What must be
atomic is one transaction (`_transaction`), rolled back whole when any part of it fails,
so a failed call leaves nothing half-written and no transaction open."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from shipyard.rollout.model import Phase, Rollout
from shipyard.rollout.records import Event, Instance, ServiceRecord, Slot
from shipyard.state.audit import AuditLog
from shipyard.state.drift_reports import DriftReports
from shipyard.state.faults import BUSY_TIMEOUT_MS, FaultLog, GuardedConnection, translate
from shipyard.state.host_states import HostStates

SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
  name TEXT PRIMARY KEY, listen TEXT NOT NULL, spec_path TEXT NOT NULL, active_slot TEXT,
  table_version INTEGER NOT NULL DEFAULT 0, slots TEXT NOT NULL, previous_image_id TEXT,
  previous_spec TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
  id TEXT PRIMARY KEY, service TEXT NOT NULL, slot TEXT NOT NULL, image_id TEXT NOT NULL,
  status TEXT NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_service ON instances(service, status);
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY, seq INTEGER NOT NULL, service TEXT NOT NULL, phase TEXT NOT NULL,
  data TEXT NOT NULL, spec TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rollouts_service ON rollouts(service, seq);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, service TEXT NOT NULL, rollout_id TEXT,
  kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_rollout ON events(rollout_id, id);
CREATE INDEX IF NOT EXISTS events_service ON events(service, id);
CREATE TABLE IF NOT EXISTS analysis (
  rollout_id TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at REAL NOT NULL);
"""

LIVE_STATUSES = ("starting", "healthy", "unhealthy")
TERMINAL_PHASES = ("succeeded", "failed", "aborted")
PAGE_CACHE_KIB = 512
"""SQLite's page cache (default 2000 KiB). The hot rows (services, instances, rollouts in
progress) fit in a few pages; the rest is history that only grows, and a default cache
fills with it as the file grows (about 45 KiB a minute with a switch every 5 s), so the
daemon's RSS kept creeping for the best part of an hour (issue 13's soak). A miss is a
read from the OS page cache."""

ONE_IN_PROGRESS = ("CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_in_progress ON rollouts(service)"
                   " WHERE phase NOT IN ('succeeded', 'failed', 'aborted')")
"""At most one rollout in progress per service, whoever writes the row. Created after
`_end_duplicate_rollouts`: a file from before it may hold two (issue 13)."""


class SqliteStore:
    def __init__(self, path: Path, faults: FaultLog | None = None) -> None:
        self.path = path
        try:   # opening may wait a little for another process (before the daemon serves anything)
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=5, factory=GuardedConnection)
        except sqlite3.Error as e:
            raise translate(e, path) or e from None
        self.db.guard(path, faults)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        self.db.executescript(SCHEMA)
        self.audit = AuditLog(self.db)
        self._drift = DriftReports(self.db)
        self._host_states = HostStates(self.db)
        self._end_duplicate_rollouts()
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")   # from now on a foreign lock fails in ms
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def faults(self) -> FaultLog:
        """The store's outage so far (cause, calls refused): what the daemon logs."""
        return self.db.faults

    def refusals(self) -> dict[str, int]:
        return dict(self.db.faults.refusals)

    def close(self) -> None:
        self.db.close()

    # -- services ----------------------------------------------------------------

    def get_service(self, name: str) -> ServiceRecord | None:
        row = self.db.execute("SELECT * FROM services WHERE name=?", (name,)).fetchone()
        return _service(row) if row else None

    def list_services(self) -> list[ServiceRecord]:
        return [_service(r) for r in self.db.execute("SELECT * FROM services ORDER BY name")]

    def put_service(self, rec: ServiceRecord) -> None:
        rec.updated_at = time.time()
        self.db.execute(
            "INSERT INTO services(name, listen, spec_path, active_slot, table_version, slots, previous_image_id,"
            " previous_spec, updated_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET"
            " listen=excluded.listen, spec_path=excluded.spec_path, active_slot=excluded.active_slot,"
            " table_version=excluded.table_version, slots=excluded.slots,"
            " previous_image_id=excluded.previous_image_id, previous_spec=excluded.previous_spec,"
            " updated_at=excluded.updated_at",
            (rec.name, rec.listen, rec.spec_path, rec.active_slot, rec.table_version,
             json.dumps(rec.slots_json()), rec.previous_image_id,
             json.dumps(rec.previous_spec) if rec.previous_spec is not None else None, rec.updated_at))

    def delete_service(self, name: str) -> None:
        self.db.execute("DELETE FROM services WHERE name=?", (name,))

    def service_lock(self, service: str) -> asyncio.Lock:
        """One daemon owns this file, so an in-process lock per service is enough."""
        return self._locks.setdefault(service, asyncio.Lock())

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing; inside another transaction, part of that one."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.rollback_quietly()
            self.audit.forget_uncommitted()
            raise
        self.audit.committed()

    # -- instances -----------------------------------------------------------------

    def put_instance(self, inst: Instance, status: str) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO instances(id, service, slot, image_id, status, data, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status,"
            " data=excluded.data, updated_at=excluded.updated_at",
            (inst.id, inst.service, inst.slot, inst.image_id, status, json.dumps(inst.to_dict()), now, now))

    def set_instance_status(self, instance_id: str, status: str) -> None:
        self.db.execute("UPDATE instances SET status=?, updated_at=? WHERE id=?",
                        (status, time.time(), instance_id))

    def instances(self, service: str | None = None, slot: str | None = None,
                  live_only: bool = True) -> list[tuple[Instance, str]]:
        q, args = "SELECT data, status FROM instances WHERE 1=1", []
        if service:
            q += " AND service=?"
            args.append(service)
        if slot:
            q += " AND slot=?"
            args.append(slot)
        if live_only:
            q += f" AND status IN ({','.join('?' * len(LIVE_STATUSES))})"
            args.extend(LIVE_STATUSES)
        q += " ORDER BY created_at, id"
        return [(Instance.from_dict(json.loads(r["data"])), r["status"]) for r in self.db.execute(q, args)]

    def instance(self, instance_id: str) -> tuple[Instance, str] | None:
        r = self.db.execute("SELECT data, status FROM instances WHERE id=?", (instance_id,)).fetchone()
        return (Instance.from_dict(json.loads(r["data"])), r["status"]) if r else None

    # -- rollouts ------------------------------------------------------------------

    def next_rollout_seq(self, service: str) -> int:
        r = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM rollouts WHERE service=?", (service,)).fetchone()
        return int(r[0])

    def put_rollout(self, r: Rollout, spec: dict[str, Any] | None = None) -> None:
        seq = int(r.id.rsplit("-", 1)[-1]) if r.id.rsplit("-", 1)[-1].isdigit() else 0
        self.db.execute(
            "INSERT INTO rollouts(id, seq, service, phase, data, spec, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET phase=excluded.phase, data=excluded.data,"
            " spec=COALESCE(excluded.spec, rollouts.spec), updated_at=excluded.updated_at",
            (r.id, seq, r.service, str(r.phase), json.dumps(r.to_dict()),
             json.dumps(spec) if spec is not None else None, r.created_at, r.updated_at))

    def begin_rollout(self, r: Rollout, spec: dict[str, Any] | None = None,
                      service: ServiceRecord | None = None) -> tuple[bool, Rollout]:
        """Check that no rollout of the service is in progress, number `r` next (its id becomes
        SERVICE-SEQ) and insert it, with `service`'s record if given, in one transaction.
        Returns (True, the new rollout), or (False, the rollout already in progress)."""
        with self._transaction():
            busy = self.db.execute(
                f"SELECT data FROM rollouts WHERE service=? AND phase NOT IN ({','.join('?' * len(TERMINAL_PHASES))})"
                " ORDER BY created_at DESC LIMIT 1", (r.service, *TERMINAL_PHASES)).fetchone()
            if busy is not None:
                return False, Rollout.from_dict(json.loads(busy["data"]))
            new = replace(r, id=f"{r.service}-{self.next_rollout_seq(r.service)}")
            if service is not None:
                self.put_service(service)
            self.put_rollout(new, spec)
            return True, new

    def _end_duplicate_rollouts(self) -> None:
        """Before the uniqueness index: a service with several rollouts in progress (two deploys
        accepted at once by an older version) keeps the newest; the others are ended as failed."""
        with self._transaction():
            rows = self.db.execute(
                "SELECT data FROM rollouts r WHERE phase NOT IN ('succeeded', 'failed', 'aborted') AND EXISTS"
                " (SELECT 1 FROM rollouts n WHERE n.service = r.service AND n.seq > r.seq"
                "  AND n.phase NOT IN ('succeeded', 'failed', 'aborted'))").fetchall()
            for row in rows:
                old = Rollout.from_dict(json.loads(row["data"]))
                self.put_rollout(old.enter(Phase.FAILED, time.time(), "another rollout of the service was "
                                           "in progress at the same time; the newest one was kept"))
            self.db.execute(ONE_IN_PROGRESS)

    def record_step(self, r: Rollout, kind: str, message: str, data: dict[str, Any] | None = None) -> Event:
        """The rollout's new state and the event telling of it, in one transaction."""
        with self._transaction():
            self.put_rollout(r)
            return self.add_event(r.service, kind, message, r.id, data)

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        row = self.db.execute("SELECT data FROM rollouts WHERE id=?", (rollout_id,)).fetchone()
        return Rollout.from_dict(json.loads(row["data"])) if row else None

    def rollout_spec(self, rollout_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT spec FROM rollouts WHERE id=?", (rollout_id,)).fetchone()
        return json.loads(row["spec"]) if row and row["spec"] else None

    def active_rollouts(self, service: str | None = None) -> list[Rollout]:
        q = f"SELECT data FROM rollouts WHERE phase NOT IN ({','.join('?' * len(TERMINAL_PHASES))})"
        args: list[Any] = list(TERMINAL_PHASES)
        if service:
            q += " AND service=?"
            args.append(service)
        return [Rollout.from_dict(json.loads(r["data"])) for r in self.db.execute(q + " ORDER BY created_at", args)]

    def rollouts(self, service: str, limit: int = 50) -> list[Rollout]:
        rows = self.db.execute("SELECT data FROM rollouts WHERE service=? ORDER BY seq DESC LIMIT ?",
                               (service, limit))
        return [Rollout.from_dict(json.loads(r["data"])) for r in rows]

    def finished_rollout_counts(self) -> list[tuple[str, str, str, str, int]]:
        """(service, kind, strategy, outcome phase, count) of ended rollouts, counted in SQL so a
        long history is never parsed; sorted by the first four."""
        rows = self.db.execute(
            "SELECT service, json_extract(data, '$.kind'), json_extract(data, '$.strategy'), phase, COUNT(*)"
            f" FROM rollouts WHERE phase IN ({','.join('?' * len(TERMINAL_PHASES))})"
            " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", TERMINAL_PHASES)
        return [(service, kind or "", strategy or "", phase, int(n)) for service, kind, strategy, phase, n in rows]

    # -- analysis evidence (one document per rollout, rewritten each tick) -----------------

    def put_analysis(self, rollout_id: str, doc: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO analysis(rollout_id, data, updated_at) VALUES (?,?,?) ON CONFLICT(rollout_id)"
                        " DO UPDATE SET data=excluded.data, updated_at=excluded.updated_at",
                        (rollout_id, json.dumps(doc), time.time()))

    def get_analysis(self, rollout_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT data FROM analysis WHERE rollout_id=?", (rollout_id,)).fetchone()
        return json.loads(row["data"]) if row else None

    def finished_analysis_ids(self) -> list[str]:
        """Rollouts whose analysis can no longer change: they have one and have ended."""
        rows = self.db.execute(
            "SELECT a.rollout_id FROM analysis a JOIN rollouts r ON r.id = a.rollout_id"
            f" WHERE r.phase IN ({','.join('?' * len(TERMINAL_PHASES))}) ORDER BY a.rollout_id", TERMINAL_PHASES)
        return [r[0] for r in rows]

    # -- events --------------------------------------------------------------------

    def add_event(self, service: str, kind: str, message: str, rollout_id: str | None = None,
                  data: dict[str, Any] | None = None) -> Event:
        """The event and the audit entry it implies, together or not at all."""
        ts = time.time()
        with self._transaction():
            cur = self.db.execute("INSERT INTO events(ts, service, rollout_id, kind, message, data)"
                                  " VALUES (?,?,?,?,?,?)", (ts, service, rollout_id, kind, message,
                                                            json.dumps(data or {})))
            event = Event(int(cur.lastrowid or 0), ts, service, rollout_id, kind, message, data or {})
            self.audit.observe(event, self.get_rollout, self.get_analysis)
        return event

    def events(self, service: str | None = None, rollout_id: str | None = None, since: int = 0,
               limit: int = 500) -> list[Event]:
        q, args = "SELECT * FROM events WHERE id > ?", [since]
        if service:
            q += " AND service=?"
            args.append(service)
        if rollout_id:
            q += " AND rollout_id=?"
            args.append(rollout_id)
        q += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [_event(r) for r in self.db.execute(q, args)]

    def last_event(self, service: str, kind: str, rollout_id: str | None = None) -> Event | None:
        """The newest event of a kind (of one rollout, if given): `events` reads oldest first, in pages."""
        q, args = "SELECT * FROM events WHERE service=? AND kind=?", [service, kind]
        if rollout_id is not None:
            q += " AND rollout_id=?"
            args.append(rollout_id)
        row = self.db.execute(q + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return _event(row) if row else None


    # -- drift reports ---------------------------------------------------------------

    def put_drift_report(self, service: str, report: dict[str, Any]) -> None:
        self._drift.put(service, report)

    def get_drift_report(self, service: str) -> dict[str, Any] | None:
        return self._drift.get(service)

    def remove_drift_report(self, service: str) -> None:
        self._drift.remove(service)

    # -- fleet hosts held out of placement ---------------------------------------------

    def put_host_state(self, address: str, state: str | None) -> None:
        self._host_states.put(address, state)

    def host_states(self) -> dict[str, str]:
        return self._host_states.all()


def _event(r: sqlite3.Row) -> Event:
    return Event(r["id"], r["ts"], r["service"], r["rollout_id"], r["kind"], r["message"], json.loads(r["data"]))


def _service(row: sqlite3.Row) -> ServiceRecord:
    slots = {k: Slot.from_dict(v) for k, v in json.loads(row["slots"]).items()}
    return ServiceRecord(row["name"], row["listen"], row["spec_path"], row["active_slot"], row["table_version"],
                         slots, row["previous_image_id"],
                         json.loads(row["previous_spec"]) if row["previous_spec"] else None, row["updated_at"])
