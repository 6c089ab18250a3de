"""The audit log: who changed what, when, why, and on what evidence.

Append-only in the store itself: SQLite triggers refuse every UPDATE and DELETE on the
table, so neither a bug nor a later version of the daemon can rewrite history (someone
with the file and the sqlite3 shell can still drop the triggers: the log records, it
does not seal). Entries come from two places: the API records the changes people ask
for, and the daemon's own decisions (a rollout's outcome, replacing a dead instance,
retiring a warm slot) are recorded from the events it emits."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from shipyard.auditing import DAEMON_ACTOR, UNKNOWN_ACTOR, RejectionThrottle
from shipyard.redaction import scrub
from shipyard.rollout.model import Rollout
from shipyard.rollout.records import AuditEntry, Event, PendingChange

__all__ = ["DAEMON_ACTOR", "UNKNOWN_ACTOR", "AuditEntry", "AuditLog", "PendingChange", "RejectionThrottle", "scrub"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  service TEXT, rollout_id TEXT, why TEXT NOT NULL, evidence TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_service ON audit(service, id);
CREATE INDEX IF NOT EXISTS audit_rollout ON audit(rollout_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: an entry cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: an entry cannot be deleted'); END;
"""

STARTS_ROLLOUT = ("deploy", "retry", "rollback", "apply")

DAEMON_EVENTS = {
    "instance.died": "instance.replace",
    "instance.unhealthy": "instance.replace",
    "slot.torn_down": "slot.teardown",
    "drift.healed": "drift.heal",
    "drift.quarantined": "drift.quarantine",
    "router.restarted": "router.restart",
    "host.lost": "host.lost",
    "host.back": "host.back",
    "instance.unrecorded_stopped": "instance.stop_unrecorded",
}
"""Events (outside a rollout) that are decisions of the daemon itself, and their action
names. A new kind of self-initiated change (e.g. a heal) is recorded by adding its event here."""

OUTCOMES = ("rollout.succeeded", "rollout.failed", "rollout.aborted")

MAX_WHY = 2000
MAX_EVIDENCE = 64_000


class AuditLog:
    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._pending: list[PendingChange] = []
        self._uncommitted: list[PendingChange] = []
        """Requests written inside the store's open transaction: unwritten again if it rolls back."""
        db.executescript(SCHEMA)

    def record(self, action: str, *, actor: str, service: str | None = None, rollout_id: str | None = None,
               why: str = "", evidence: dict[str, Any] | None = None) -> AuditEntry:
        ev = scrub(evidence or {})
        data = json.dumps(ev, sort_keys=True, default=str)
        if len(data) > MAX_EVIDENCE:
            ev = {"truncated": True, "size": len(data), "head": data[:MAX_EVIDENCE // 2]}
            data = json.dumps(ev, sort_keys=True)
        why = scrub(why)[:MAX_WHY]
        ts = self.clock()
        cur = self.db.execute(
            "INSERT INTO audit(ts, actor, action, service, rollout_id, why, evidence) VALUES (?,?,?,?,?,?,?)",
            (ts, actor, action, service, rollout_id, why, data))
        return AuditEntry(int(cur.lastrowid or 0), ts, actor, action, service, rollout_id, why, ev)

    def entries(self, service: str | None = None, limit: int = 100, since: int = 0) -> list[AuditEntry]:
        """The last `limit` entries after id `since` (of one service), oldest first."""
        q, args = "SELECT * FROM audit WHERE id > ?", [since]
        if service:
            q += " AND service=?"
            args.append(service)
        rows = self.db.execute(q + " ORDER BY id DESC LIMIT ?", [*args, max(0, limit)]).fetchall()
        return [_entry(r) for r in reversed(rows)]

    def started_by(self, rollout_id: str) -> str | None:
        """The actor who started a rollout."""
        marks = ",".join("?" * len(STARTS_ROLLOUT))
        row = self.db.execute(f"SELECT actor FROM audit WHERE rollout_id=? AND action IN ({marks})"
                              " ORDER BY id LIMIT 1", (rollout_id, *STARTS_ROLLOUT)).fetchone()
        return str(row["actor"]) if row else None

    # -- requests ------------------------------------------------------------------------

    def begin(self, action: str, *, actor: str, service: str | None, why: str = "",
              evidence: dict[str, Any] | None = None, rollout_id: str | None = None) -> PendingChange:
        """`service` None: not known yet (a deploy, until its rollout is created)."""
        pending = PendingChange(actor, action, service, why, dict(evidence or {}), rollout_id)
        self._pending.append(pending)
        return pending

    def finish(self, pending: PendingChange, rollout_id: str | None = None,
               failed: str | None = None) -> AuditEntry | None:
        """The request is done: write it (if not yet), or say it failed half-way (if it had consequences)."""
        if pending in self._pending:
            self._pending.remove(pending)
        if failed is not None:
            if pending.entry is None:
                return None
            return self.record(f"{pending.action}.failed", actor=pending.actor, service=pending.service,
                               rollout_id=pending.rollout_id, why=failed)
        pending.rollout_id = pending.rollout_id or rollout_id
        return self._write(pending)

    def _write(self, pending: PendingChange) -> AuditEntry:
        if pending.entry is None:
            pending.entry = self.record(pending.action, actor=pending.actor, service=pending.service,
                                        rollout_id=pending.rollout_id, why=pending.why,
                                        evidence=pending.evidence)
            if self.db.in_transaction:
                self._uncommitted.append(pending)
        return pending.entry

    def committed(self) -> None:
        self._uncommitted.clear()

    def forget_uncommitted(self) -> None:
        """The store's transaction was rolled back (disk full at COMMIT): the entries written
        in it are gone, so their requests are written again with the next event that flushes them."""
        for p in self._uncommitted:
            p.entry = None
        self._uncommitted.clear()

    def _has_outcome(self, rollout_id: str) -> bool:
        marks = ",".join("?" * len(OUTCOMES))
        return self.db.execute(f"SELECT 1 FROM audit WHERE rollout_id=? AND action IN ({marks}) LIMIT 1",
                               (rollout_id, *OUTCOMES)).fetchone() is not None

    def _attach(self, ev: Event) -> PendingChange | None:
        """The request that started the rollout an event belongs to: it takes the rollout's id."""
        if not ev.rollout_id:
            return None
        starter = next((p for p in reversed(self._pending)
                        if p.service in (None, ev.service) and p.action in STARTS_ROLLOUT
                        and p.entry is None and p.rollout_id is None), None)
        if starter is not None:
            starter.service, starter.rollout_id = ev.service, ev.rollout_id
        return starter

    def _flush(self, service: str) -> list[PendingChange]:
        waiting = [p for p in self._pending if p.service == service]
        for p in waiting:
            self._write(p)
        return waiting

    # -- the daemon's own decisions, from its events ---------------------------------------

    def observe(self, ev: Event, rollout_of: Callable[[str], Rollout | None],
                analysis_of: Callable[[str], dict[str, Any] | None]) -> AuditEntry | None:
        if ev.kind == "rollout.created":
            starter = self._attach(ev)
            self._flush(ev.service)
            return starter.entry if starter else None
        outcome = _outcome(ev)
        if outcome is not None and ev.rollout_id and not self._has_outcome(ev.rollout_id):
            self._flush(ev.service)
            r = rollout_of(ev.rollout_id)
            analysis = analysis_of(ev.rollout_id) if r is not None and r.strategy == "canary" else None
            why = (r.reason if r is not None else "") or ev.message
            return self.record(outcome, actor=DAEMON_ACTOR, service=ev.service, rollout_id=ev.rollout_id,
                               why=why, evidence=outcome_evidence(r, analysis))
        if ev.kind == "audit.allow_unsafe":
            self._attach(ev)      # said when the rollout is created, before its `rollout.created`
            waiting = self._flush(ev.service)
            if not ev.data.get("findings"):
                return None       # only the intent: it is in the evidence of the request's entry
            actor = (self.started_by(ev.rollout_id) if ev.rollout_id else None) or (
                waiting[-1].actor if waiting else None) or DAEMON_ACTOR
            return self.record("allow_unsafe", actor=actor, service=ev.service, rollout_id=ev.rollout_id,
                               why=str(ev.data.get("reason") or ev.message),
                               evidence={"findings": [_finding(f) for f in ev.data.get("findings") or []]})
        action = DAEMON_EVENTS.get(ev.kind)
        if action is not None and not ev.rollout_id:
            self._flush(ev.service)
            facts = {k: v for k, v in ev.data.items() if isinstance(v, str | int | float)}
            return self.record(action, actor=DAEMON_ACTOR, service=ev.service, why=ev.message, evidence=facts)
        return None


def _outcome(ev: Event) -> str | None:
    """The outcome a rollout event announces: at the phase change itself (the final
    `rollout.<phase>` event only comes after the teardown, when a next rollout may have begun)."""
    if ev.kind in OUTCOMES:
        return ev.kind
    if ev.kind == "rollout.phase" and f"rollout.{ev.data.get('phase')}" in OUTCOMES:
        return f"rollout.{ev.data['phase']}"
    return None


def outcome_evidence(r: Rollout | None, analysis: dict[str, Any] | None) -> dict[str, Any]:
    """What a rollout's end was decided on: its release, the phase it ended in, the analysis verdicts."""
    if r is None:
        return {}
    out: dict[str, Any] = {"kind": str(r.kind), "strategy": r.strategy, "image": r.image_id,
                           "previous_image": r.previous_image_id, "slot": r.target_slot,
                           "seconds": round(sum(r.timings.values()), 3)}
    if r.strategy == "canary":
        out["weight"] = r.weight
        out["step"] = r.step_index + 1
    if analysis:
        out["analysis"] = {"status": analysis.get("status"),
                           "verdicts": [{k: v.get(k) for k in ("metric", "kind", "status", "detail")}
                                        for v in analysis.get("verdicts", [])]}
    return out


def _finding(f: dict[str, Any]) -> dict[str, Any]:
    return {k: f.get(k) for k in ("rule", "location", "lock", "message", "breaks_old_release") if k in f}


def _entry(r: sqlite3.Row) -> AuditEntry:
    return AuditEntry(r["id"], r["ts"], r["actor"], r["action"], r["service"], r["rollout_id"], r["why"],
                      json.loads(r["evidence"]))
