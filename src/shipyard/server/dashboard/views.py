"""What the dashboard reads, built from the controller's state: one document per service
and the per-track series. These are served without the API token, so they are curated
views (no spec, no environment, no paths) and every free-form value passes the audit
log's scrubber; the token itself is never part of any of them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shipyard import histogram
from shipyard.analysis import Second
from shipyard.engine.controller import Controller
from shipyard.engine.queries import KEEP_SECONDS
from shipyard.errors import ShipyardError
from shipyard.redaction import scrub
from shipyard.rollout.model import SLOTS, Rollout

TIMELINE_EVENTS = 200
DATABASE_EVENTS = ("database.plan", "database.checked", "database.applied")
LOOKBACK_ROLLOUTS = 10
"""How many recent rollouts to search for the last database check."""


async def services_view(controller: Controller) -> list[dict[str, Any]]:
    out = []
    for svc in controller.queries.list_services():
        try:
            out.append(await service_view(controller, svc.name))
        except ShipyardError:        # removed between the listing and the read
            continue
    return out


def hosts_view(controller: Controller) -> list[dict[str, Any]]:
    """The fleet hosts panel: each host once with its state and instances per service (the
    store and the runtime's status cache; no SSH on a dashboard poll)."""
    try:
        rows = controller.queries.hosts.summary()
    except ShipyardError:            # a stored spec that no longer parses: the panel is not the place to say
        return []
    return [scrub({"name": r["name"], "address": r["address"], "state": r["state"], "services": r["services"],
                   "silent_seconds": r["silent_seconds"], "instances": r["instances"]}) for r in rows]


async def service_view(controller: Controller, name: str) -> dict[str, Any]:
    status = controller.queries.status(name)
    split, split_source = await _split(controller, name, status)
    rollout = _rollout_to_show(controller, name)
    tracks = []
    for slot in (*SLOTS, *(["baseline"] if "baseline" in status["slots"] else [])):
        s = status["slots"][slot]
        tracks.append({
            "slot": slot, "state": s["state"], "role": _role(slot, s["state"], status["live_slot"]),
            "image": s["image"], "weight": split.get(slot, 0.0), "retire_at": s["retire_at"],
            "instances": [{"id": i["id"], "host": i["host"], "port": i["port"], "status": i["status"],
                           "image": i["image_id"]} for i in s["instances"]],
        })
    return {
        "service": name, "listen": status["listen"], "live_slot": status["live_slot"],
        "table_version": status["table_version"], "tracks": tracks,
        "split": split, "split_source": split_source,
        "rollout": _rollout_view(controller, rollout) if rollout else None,
        "drift": status["drift"], "enforcement": status["enforcement"],
        "database": _last_database_check(controller, name),
    }


def series_view(controller: Controller, service: str, since: int, now: float) -> dict[str, Any]:
    """Per-track per-second points after `since` (at most the last 15 minutes, idle
    seconds as zero), with the quantiles computed here from the histogram buckets."""
    controller.queries.status(service)                      # NotFoundError for an unknown service
    reads = controller.queries
    upto = reads.series_upto(service) or int(now) - 1
    after = max(int(since), upto - KEEP_SECONDS)
    tracks: dict[str, list[dict[str, Any]]] = {}
    for slot in (*SLOTS, "baseline"):
        seconds = reads.series(service, slot, after, upto)
        if any(s.requests for s in seconds) or since > 0:
            tracks[slot] = [point(s) for s in seconds]
    return {"service": service, "upto": upto, "window": KEEP_SECONDS, "tracks": tracks}


def point(s: Second) -> dict[str, Any]:
    return {"t": s.t, "requests": s.requests, "errors": s.errors,
            "error_rate": s.errors / s.requests if s.requests else None,
            "p50_ms": _finite(histogram.quantile_ms(s.latency, 0.5)),
            "p99_ms": _finite(histogram.quantile_ms(s.latency, 0.99))}


def _finite(ms: float | None) -> float | None:
    if ms is None:
        return None
    return ms if ms != float("inf") else histogram.BOUNDS_MS[-1]


def _role(slot: str, state: str, live: str | None) -> str:
    if slot == live:
        return "stable"
    return {"canary": "canary", "baseline": "baseline", "warm": "warm", "starting": "starting"}.get(state, "idle")


async def _split(controller: Controller, name: str, status: dict[str, Any]) -> tuple[dict[str, float], str]:
    """The split the router serves now; the controller's record of it if the router cannot say."""
    try:
        table = await controller.queries.routing_table(name)
    except ShipyardError:
        table = None
    if table is not None:
        return {t: float(w) for t, w in table.weights.items() if t in (*SLOTS, "baseline")}, "router"
    live = status["live_slot"]
    canary = {slot: float(s["weight"]) for slot, s in status["slots"].items() if s["state"] == "canary"}
    if live is None:
        return canary, "state"
    return {live: 100.0 - sum(canary.values()), **canary}, "state"


def _rollout_to_show(controller: Controller, name: str) -> Rollout | None:
    store = controller.queries
    active = store.active_rollouts(name)
    if active:
        return active[-1]
    last = store.rollouts(name, 1)
    return last[0] if last else None


def _rollout_view(controller: Controller, r: Rollout) -> dict[str, Any]:
    store = controller.queries
    events = store.events(rollout_id=r.id, limit=100_000)[-TIMELINE_EVENTS:]
    audit = [a for a in store.audit.entries(r.service, 500) if a.rollout_id == r.id]
    doc = store.rollout_spec(r.id) or {}
    steps = ((doc.get("strategy") or {}).get("canary") or {}).get("steps") if r.strategy == "canary" else None
    return {
        "rollout": r.to_dict(), "started_by": store.audit.started_by(r.id),
        "steps": scrub(steps) if steps else [],
        "analysis": _analysis(store.get_analysis(r.id)) if r.strategy == "canary" else None,
        "timeline": sorted(_events(events) + _decisions(audit), key=lambda e: e["ts"]),
    }


def _analysis(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {"status": doc.get("status"), "canary": doc.get("canary"), "stable": doc.get("stable"),
            "verdicts": scrub(doc.get("verdicts") or [])}


def _events(events: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"ts": e.ts, "source": "event", "kind": e.kind, "message": scrub(e.message),
             "weight": e.data.get("weight") if e.kind == "canary.weight" else None} for e in events]


def _decisions(entries: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"ts": a.ts, "source": "audit", "kind": a.action, "actor": a.actor, "message": a.why}
            for a in entries]


def _last_database_check(controller: Controller, name: str) -> dict[str, Any] | None:
    """The database events of the most recent rollout that had any: its plan and its rehearsal."""
    store = controller.queries
    for r in store.rollouts(name, LOOKBACK_ROLLOUTS):
        found = [e for e in store.events(rollout_id=r.id, limit=100_000) if e.kind in DATABASE_EVENTS]
        if not found:
            continue
        checked = next((e for e in reversed(found) if e.kind == "database.checked"), None)
        check = (checked.data.get("check") or {}) if checked else {}
        return {"rollout_id": r.id, "ts": found[-1].ts,
                "events": [{"ts": e.ts, "kind": e.kind, "message": scrub(e.message)} for e in found],
                "check_ok": check.get("ok") if checked else None,
                "reasons": scrub(check.get("reasons") or [])}
    return None
