"""InMemoryStore: the Store port kept in dicts, with SqliteStore's semantics (orderings,
event ids, the upsert rules, copies in and out), so the engine can be driven whole in
memory and a "crash" is simply a new controller on the same store object.

Records go in and come out through their dict/JSON forms, as they do through SQLite:
mutating a record you read never changes the store, and what you stored is what the
next reader sees. The audit trail keeps its real implementation (state/audit.AuditLog) on
a private in-memory SQLite connection: it is logic over an append-only table, and a
second copy of that logic here could drift from the real one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shipyard.errors import StoreUnavailable
from shipyard.rollout.model import Rollout
from shipyard.rollout.records import Event, Instance, ServiceRecord, Slot
from shipyard.state.audit import AuditLog

LIVE_STATUSES = ("starting", "healthy", "unhealthy")
TERMINAL_PHASES = ("succeeded", "failed", "aborted")


def _copy(doc: Any) -> Any:
    return json.loads(json.dumps(doc))


@dataclass
class _Row:
    """One rollout as SqliteStore's `rollouts` table holds it."""

    seq: int
    service: str
    phase: str
    data: str
    spec: str | None
    created_at: float
    updated_at: float


@dataclass
class _Data:
    """Everything a store holds; shared by a store and its `reopen()`ed twin."""

    services: dict[str, str] = field(default_factory=dict)                        # name -> json
    instances: dict[str, tuple[str, str, str, str, float, float]] = field(default_factory=dict)
    """id -> (service, slot, status, data json, created_at, updated_at)"""
    rollouts: dict[str, _Row] = field(default_factory=dict)
    analysis: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    drift: dict[str, tuple[str, float | None]] = field(default_factory=dict)     # service -> (json, full_at)
    host_states: dict[str, str] = field(default_factory=dict)     # address -> draining | removed
    db: sqlite3.Connection = field(default_factory=lambda: sqlite3.connect(":memory:"))
    audit_log: AuditLog | None = None


class InMemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time, data: _Data | None = None) -> None:
        self.clock = clock
        self._d = data or _Data()
        self._d.db.row_factory = sqlite3.Row
        if self._d.audit_log is None:
            self._d.audit_log = AuditLog(self._d.db, clock)
        self._locks: dict[str, asyncio.Lock] = {}     # per store object: a restarted daemon has fresh locks
        self.put_rollout_calls = 0
        """Rollout states persisted through this object (put_rollout or record_step): the crash tests' steps."""
        self.on_put_rollout: Callable[[Rollout], None] = lambda r: None
        """Called once each rollout state is stored (with its event, for record_step): a test crashes from here."""
        self.fail_writes: StoreUnavailable | None = None
        """Set: every write raises it (a full disk, a foreign lock), changing nothing; None: writes work again."""
        self.refused_writes = 0
        self._refusals: dict[str, int] = {}

    def _writable(self) -> None:
        if self.fail_writes is not None:
            self.refused_writes += 1
            cause = self.fail_writes.cause
            self._refusals[cause] = self._refusals.get(cause, 0) + 1
            raise self.fail_writes

    def refusals(self) -> dict[str, int]:
        return dict(self._refusals)

    @property
    def audit(self) -> AuditLog:
        assert self._d.audit_log is not None
        return self._d.audit_log

    def service_lock(self, service: str) -> asyncio.Lock:
        return self._locks.setdefault(service, asyncio.Lock())

    def reopen(self) -> InMemoryStore:
        """The same data behind a fresh store object: what a restarted daemon opens."""
        return InMemoryStore(self.clock, self._d)

    def close(self) -> None:
        """Nothing to release; the data stays for `reopen()`."""

    # -- services ----------------------------------------------------------------

    def get_service(self, name: str) -> ServiceRecord | None:
        doc = self._d.services.get(name)
        return _service(json.loads(doc)) if doc is not None else None

    def list_services(self) -> list[ServiceRecord]:
        return [_service(json.loads(self._d.services[n])) for n in sorted(self._d.services)]

    def put_service(self, rec: ServiceRecord) -> None:
        self._writable()
        rec.updated_at = self.clock()
        self._d.services[rec.name] = json.dumps({
            "name": rec.name, "listen": rec.listen, "spec_path": rec.spec_path, "active_slot": rec.active_slot,
            "table_version": rec.table_version, "slots": rec.slots_json(), "previous_image_id": rec.previous_image_id,
            "previous_spec": rec.previous_spec, "updated_at": rec.updated_at})

    def delete_service(self, name: str) -> None:
        self._writable()
        self._d.services.pop(name, None)

    # -- instances -----------------------------------------------------------------

    def put_instance(self, inst: Instance, status: str) -> None:
        self._writable()
        now = self.clock()
        old = self._d.instances.get(inst.id)
        if old is None:
            self._d.instances[inst.id] = (inst.service, inst.slot, status, json.dumps(inst.to_dict()), now, now)
        else:   # like the SQL upsert: service and slot keep their first values; data and status change
            self._d.instances[inst.id] = (old[0], old[1], status, json.dumps(inst.to_dict()), old[4], now)

    def set_instance_status(self, instance_id: str, status: str) -> None:
        self._writable()
        old = self._d.instances.get(instance_id)
        if old is not None:
            self._d.instances[instance_id] = (old[0], old[1], status, old[3], old[4], self.clock())

    def instances(self, service: str | None = None, slot: str | None = None,
                  live_only: bool = True) -> list[tuple[Instance, str]]:
        rows = [(iid, row) for iid, row in self._d.instances.items()
                if (not service or row[0] == service) and (not slot or row[1] == slot)
                and (not live_only or row[2] in LIVE_STATUSES)]
        rows.sort(key=lambda item: (item[1][4], item[0]))
        return [(Instance.from_dict(json.loads(row[3])), row[2]) for _iid, row in rows]

    def instance(self, instance_id: str) -> tuple[Instance, str] | None:
        row = self._d.instances.get(instance_id)
        return (Instance.from_dict(json.loads(row[3])), row[2]) if row else None

    # -- rollouts ------------------------------------------------------------------

    def next_rollout_seq(self, service: str) -> int:
        return max((r.seq for r in self._d.rollouts.values() if r.service == service), default=0) + 1

    def put_rollout(self, r: Rollout, spec: dict[str, Any] | None = None) -> None:
        self._writable()
        self._put_rollout(r, spec)
        self.put_rollout_calls += 1
        self.on_put_rollout(r)

    def begin_rollout(self, r: Rollout, spec: dict[str, Any] | None = None,
                      service: ServiceRecord | None = None) -> tuple[bool, Rollout]:
        """The check, the numbering and the insert (with the service record) at once: nothing
        here awaits, so no other task runs in between."""
        busy = self.active_rollouts(r.service)
        if busy:
            return False, max(busy, key=lambda b: b.created_at)
        self._writable()          # refused whole, before anything is written
        new = replace(r, id=f"{r.service}-{self.next_rollout_seq(r.service)}")
        if service is not None:
            self.put_service(service)
        self.put_rollout(new, spec)
        return True, new

    def record_step(self, r: Rollout, kind: str, message: str, data: dict[str, Any] | None = None) -> Event:
        """Both or neither, as in one transaction: nothing here can fail in between."""
        self._writable()
        self._put_rollout(r, None)
        event = self.add_event(r.service, kind, message, r.id, data)
        self.put_rollout_calls += 1
        self.on_put_rollout(r)
        return event

    def _put_rollout(self, r: Rollout, spec: dict[str, Any] | None) -> None:
        tail = r.id.rsplit("-", 1)[-1]
        seq = int(tail) if tail.isdigit() else 0
        old = self._d.rollouts.get(r.id)
        if str(r.phase) not in TERMINAL_PHASES and any(
                o.service == r.service and o.phase not in TERMINAL_PHASES for rid, o in self._d.rollouts.items()
                if rid != r.id):   # SqliteStore's unique index rollouts_one_in_progress
            raise sqlite3.IntegrityError("UNIQUE constraint failed: rollouts.service")
        spec_doc = json.dumps(spec) if spec is not None else (old.spec if old else None)
        if old is None:
            self._d.rollouts[r.id] = _Row(seq, r.service, str(r.phase), json.dumps(r.to_dict()), spec_doc,
                                          r.created_at, r.updated_at)
        else:   # the upsert keeps seq, service and created_at of the first insert
            old.phase, old.data, old.spec, old.updated_at = str(r.phase), json.dumps(r.to_dict()), spec_doc, r.updated_at

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        row = self._d.rollouts.get(rollout_id)
        return Rollout.from_dict(json.loads(row.data)) if row else None

    def rollout_spec(self, rollout_id: str) -> dict[str, Any] | None:
        row = self._d.rollouts.get(rollout_id)
        return json.loads(row.spec) if row and row.spec else None

    def active_rollouts(self, service: str | None = None) -> list[Rollout]:
        rows = [r for r in self._d.rollouts.values()
                if r.phase not in TERMINAL_PHASES and (not service or r.service == service)]
        rows.sort(key=lambda r: r.created_at)    # stable: ties keep insertion order, as SQLite's rowid scan does
        return [Rollout.from_dict(json.loads(r.data)) for r in rows]

    def rollouts(self, service: str, limit: int = 50) -> list[Rollout]:
        rows = sorted((r for r in self._d.rollouts.values() if r.service == service), key=lambda r: -r.seq)
        return [Rollout.from_dict(json.loads(r.data)) for r in rows[:max(0, limit)]]

    def finished_rollout_counts(self) -> list[tuple[str, str, str, str, int]]:
        counts: dict[tuple[str, str, str, str], int] = {}
        for r in self._d.rollouts.values():
            if r.phase in TERMINAL_PHASES:
                doc = json.loads(r.data)
                key = (r.service, doc.get("kind") or "", doc.get("strategy") or "", r.phase)
                counts[key] = counts.get(key, 0) + 1
        return [(*key, n) for key, n in sorted(counts.items())]

    # -- analysis evidence -----------------------------------------------------------

    def put_analysis(self, rollout_id: str, doc: dict[str, Any]) -> None:
        self._writable()
        self._d.analysis[rollout_id] = json.dumps(doc)

    def get_analysis(self, rollout_id: str) -> dict[str, Any] | None:
        doc = self._d.analysis.get(rollout_id)
        return json.loads(doc) if doc is not None else None

    def finished_analysis_ids(self) -> list[str]:
        return sorted(rid for rid in self._d.analysis
                      if (r := self._d.rollouts.get(rid)) is not None and r.phase in TERMINAL_PHASES)

    # -- events --------------------------------------------------------------------

    def add_event(self, service: str, kind: str, message: str, rollout_id: str | None = None,
                  data: dict[str, Any] | None = None) -> Event:
        self._writable()
        event = Event(len(self._d.events) + 1, self.clock(), service, rollout_id, kind, message, _copy(data or {}))
        self._d.events.append(event)
        self.audit.observe(event, self.get_rollout, self.get_analysis)
        return _event_copy(event)

    def events(self, service: str | None = None, rollout_id: str | None = None, since: int = 0,
               limit: int = 500) -> list[Event]:
        out = [e for e in self._d.events[max(0, since):]
               if (not service or e.service == service) and (not rollout_id or e.rollout_id == rollout_id)]
        return [_event_copy(e) for e in out[:max(0, limit)]]

    def last_event(self, service: str, kind: str, rollout_id: str | None = None) -> Event | None:
        for e in reversed(self._d.events):
            if e.service == service and e.kind == kind and (rollout_id is None or e.rollout_id == rollout_id):
                return _event_copy(e)
        return None

    # -- drift reports (the last one per service) ----------------------------------------

    def put_drift_report(self, service: str, report: dict[str, Any]) -> None:
        self._writable()
        old = self._d.drift.get(service)
        full_at = report["scanned_at"] if report.get("mode") == "full" else (old[1] if old else None)
        self._d.drift[service] = (json.dumps(report), full_at)

    def get_drift_report(self, service: str) -> dict[str, Any] | None:
        row = self._d.drift.get(service)
        if row is None:
            return None
        doc: dict[str, Any] = json.loads(row[0])
        doc["last_full_at"] = row[1]
        return doc

    def remove_drift_report(self, service: str) -> None:
        self._writable()
        self._d.drift.pop(service, None)

    # -- fleet hosts held out of placement ------------------------------------------------

    def put_host_state(self, address: str, state: str | None) -> None:
        self._writable()
        if state is None:
            self._d.host_states.pop(address, None)
        else:
            self._d.host_states[address] = state

    def host_states(self) -> dict[str, str]:
        return dict(sorted(self._d.host_states.items()))


def _event_copy(e: Event) -> Event:
    return Event(e.id, e.ts, e.service, e.rollout_id, e.kind, e.message, _copy(e.data))


def _service(d: dict[str, Any]) -> ServiceRecord:
    slots = {k: Slot.from_dict(v) for k, v in d["slots"].items()}
    return ServiceRecord(d["name"], d["listen"], d["spec_path"], d["active_slot"], d["table_version"], slots,
                         d["previous_image_id"], d["previous_spec"], d["updated_at"])
