"""What server/ reads (`Queries`), and what the checklist reads in the daemon: slots and instances, the previous image (verified
now, not trusted), the measured switch and rollout timings from the event log, the last
drift report, and the database plan. Each check is then decided by `shipyard.checklist`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from shipyard.analysis import Second
from shipyard.checklist import (
    COLD_PHASES,
    REFERENCE_RATE,
    BlastInputs,
    Check,
    DatabaseInputs,
    DriftInputs,
    LastDbCheck,
    PreviousImage,
    Timing,
    UndoInputs,
    WarmSlot,
    blast_radius_check,
    database_check,
    drift_check,
    report,
    undo_check,
)
from shipyard.engine import edge
from shipyard.engine.actions import spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.engine.fleet_hosts import FleetHosts
from shipyard.engine.metrics_feed import KEEP_SECONDS, MetricsFeed
from shipyard.engine.migrating import DatabaseGate
from shipyard.engine.ports import AuditTrail
from shipyard.errors import NotFoundError, ShipyardError
from shipyard.rollout.exposure import exposure
from shipyard.rollout.model import Kind, Phase, Rollout, other_slot
from shipyard.rollout.records import Event, Instance, ServiceRecord, SlotState
from shipyard.router.table import RoutingTable
from shipyard.spec import Spec
from shipyard.spec.strategy import AnalysisStep, PauseStep, SetWeightStep

if TYPE_CHECKING:
    from shipyard.images import Image, ImageStore


class Controller(Protocol):
    """What the checklist reads of the controller (a Protocol, so this module, which the
    controller imports, does not import it back)."""

    d: Deps
    gate: DatabaseGate

    def enforcement(self) -> dict[str, str] | None: ...

RECENT_ROLLOUTS = 20


async def checklist(controller: Controller, service: str, rate: float = REFERENCE_RATE) -> dict[str, Any]:
    """The four checks of one service, judged on the live release's spec (what is deployed)."""
    svc = controller.d.store.get_service(service)
    if svc is None:
        raise NotFoundError(f"no service named {service!r}", "`shipyard status` lists the services")
    now = controller.d.clock.now()
    spec = _live_spec(svc)
    checks: list[Check] = [undo_check(await _undo(controller, svc, now))]
    if spec is None:
        checks.append(Check("blast_radius", "WARN", "nothing is live: no strategy to judge", {},
                            "deploy the service first"))
    else:
        checks.append(blast_radius_check(_blast(spec, rate)))
    checks.append(drift_check(DriftInputs(
        now=now, report=controller.d.store.get_drift_report(service), enforcement=controller.queries.enforcement(),
        interval=spec.drift.interval if spec else 60.0, full_interval=spec.drift.full_interval if spec else 3600.0)))
    checks.append(database_check(await _database(controller, svc, spec)))
    doc = report(service, checks, now)
    doc["spec"] = "live release" if spec is not None else None
    return doc


def _live_spec(svc: ServiceRecord) -> Spec | None:
    live = svc.live
    return spec_from_doc(live.spec, svc.spec_path) if live is not None and live.spec else None


# -- Undo ----------------------------------------------------------------------------------------

async def _undo(controller: Controller, svc: ServiceRecord, now: float) -> UndoInputs:
    store = controller.d.store
    active = store.active_rollouts(svc.name)
    warm = None
    if svc.active_slot:
        other = other_slot(svc.active_slot)
        s = svc.slots.get(other)
        if s is not None and s.state == SlotState.WARM and s.image_id and s.spec:
            healthy = sum(1 for i, st in store.instances(svc.name, other)
                          if st == "healthy" and controller.d.runtime.is_alive(i))
            warm = WarmSlot(other, s.image_id, healthy, s.retire_at)
    switch = store.last_event(svc.name, "traffic.switched")
    last_switch = None
    if switch is not None and isinstance(switch.data.get("seconds"), int | float):
        last_switch = Timing(float(switch.data["seconds"]), switch.rollout_id or f"event {switch.id}", switch.ts)
    rollouts = store.rollouts(svc.name, RECENT_ROLLOUTS)
    back = next((r for r in rollouts if r.kind is Kind.ROLLBACK and r.phase is Phase.SUCCEEDED), None)
    last_rollback = Timing(back.updated_at - back.created_at, back.id, back.updated_at) if back else None
    good = next((r for r in rollouts if r.phase is Phase.SUCCEEDED and "starting" in r.timings), None)
    previous = None
    if svc.previous_image_id and svc.previous_spec and svc.previous_image_id != (svc.live and svc.live.image_id):
        previous = await asyncio.to_thread(inspect_image, controller.d.images, svc.previous_image_id)
    return UndoInputs(now=now, live_image=svc.live.image_id if svc.live else None,
                      rollout_in_progress=active[-1].id if active else None, warm=warm, last_switch=last_switch,
                      last_rollback=last_rollback, previous=previous,
                      cold_phases={k: good.timings.get(k, 0.0) for k in COLD_PHASES} if good else None,
                      cold_source=good.id if good else "")


def inspect_image(images: ImageStore, image_id: str) -> PreviousImage:
    """Can this image be started right now, and if its tree is gone or bad, can it be rewritten?"""
    t0 = time.perf_counter()
    tree = images.tree_path(image_id)
    try:
        manifest = images.get(image_id).manifest
    except ShipyardError as e:
        return PreviousImage(image_id, "missing", e.message, str(tree), False, e.message)
    if tree.is_dir():
        v = images.verify(image_id)
        state, summary = ("intact" if v.ok else "tampered"), v.summary()
    else:
        state, summary = "missing", f"image {image_id[:12]}: no tree at {tree} (written on the next start)"
    problem = images.object_problem(manifest) if state != "intact" else None
    return PreviousImage(image_id, state, summary, str(tree), problem is None, problem or "",
                         time.perf_counter() - t0)


# -- Blast radius --------------------------------------------------------------------------------

def _blast(spec: Spec, rate: float) -> BlastInputs:
    bg = spec.strategy.blue_green
    steps = [_step_words(s) for s in spec.strategy.canary.steps] if spec.strategy.canary is not None else []
    return BlastInputs(exposure=exposure(spec, rate).to_dict(),
                       preview_checks=len(bg.preview_checks) if bg is not None else 0,
                       auto_promote=bg.auto_promote if bg is not None else True, steps=steps)


def _step_words(step: object) -> str:
    match step:
        case SetWeightStep(set_weight=w):
            return f"set_weight {w:g}%"
        case PauseStep(pause=p):
            return "pause until promoted" if p.duration is None else f"pause {p.duration:g}s"
        case AnalysisStep(analysis=a):
            return f"analysis {a.duration:g}s"
    return str(step)


# -- Database ------------------------------------------------------------------------------------

async def _database(controller: Controller, svc: ServiceRecord, spec: Spec | None) -> DatabaseInputs:
    if spec is None or spec.database is None:
        return DatabaseInputs(has_database=False)
    last = _last_db_check(controller, svc.name)
    try:
        plan = await controller.gate.plan(spec)
    except Exception as e:      # whatever stops us asking the database: "cannot tell", never "none pending"
        why = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        return DatabaseInputs(has_database=True, error=str(why), last_check=last)
    return DatabaseInputs(has_database=True, plan=plan.to_dict(),
                          gate_blocking=[f.to_dict() for f in plan.gate_findings()], last_check=last)


def _last_db_check(controller: Controller, service: str) -> LastDbCheck | None:
    store = controller.d.store
    checked = store.last_event(service, "database.checked")
    if checked is None:
        return None
    rehearsal = checked.data.get("check") or {}
    versions: list[str] = list(checked.data.get("versions") or [])
    if not versions and checked.rollout_id:        # recorded before checks named their migrations
        plan = store.last_event(service, "database.plan", checked.rollout_id)
        if plan is not None:
            versions = list((plan.data.get("plan") or {}).get("expand", []))
    return LastDbCheck(checked.rollout_id, checked.ts, bool(rehearsal.get("ok")),
                       list(rehearsal.get("reasons") or []), versions)


class Queries:
    """What server/ (API, dashboard, /metrics) reads, and nothing it could change the engine
    with: the read side of the store, the image list and the router's view. The server
    holds this, never `controller.d`, so the engine's internals can move freely and a read
    replica could answer instead."""

    def __init__(self, deps: Deps, feed: MetricsFeed) -> None:
        self._d = deps
        self._feed = feed
        self.hosts = FleetHosts(deps)
        """`shipyard hosts` and `hosts check`: fleet hosts as they are now (engine/fleet_hosts.py)."""
        self.driving: Callable[[str], tuple[bool, str | None]] = lambda rollout_id: (False, None)
        """(is a driver of this daemon running the rollout, why it is held at its step if it is);
        the controller sets it, so `status` tells a held rollout from an orphan."""

    def status(self, service: str) -> dict[str, Any]:
        """What `shipyard status` shows: slots, instances, the rollout in progress, drift."""
        svc = self._d.store.get_service(service)
        if svc is None:
            raise NotFoundError(f"no service named {service!r}", "deploy it first: shipyard deploy -f FILE")
        actives = self._d.store.active_rollouts(service)
        active = actives[-1] if actives else None
        insts = self._d.store.instances(service)
        return {
            "service": svc.name, "listen": svc.listen, "live_slot": svc.active_slot,
            "live_image": svc.live.image_id if svc.live else None, "table_version": svc.table_version,
            "previous_image": svc.previous_image_id,
            "slots": {name: {"state": s.state, "image": s.image_id, "retire_at": s.retire_at, "weight": s.weight,
                             "instances": [dict(i.to_dict(), status=st) for i, st in insts if i.slot == name]}
                      for name, s in svc.slots.items()},
            "rollout": dict(active.to_dict(), **dict(zip(("driven", "held"), self.driving(active.id), strict=True)))
            if active else None,
            "analysis": self._d.store.get_analysis(active.id) if active and active.strategy == "canary" else None,
            "drift": _drift_summary(self._d.store.get_drift_report(service)),
            "enforcement": self.enforcement(),
            "tls": edge.status(edge.served(self._d.paths, service)),
        }

    async def host_log(self, inst: Instance, lines: int) -> str | None:
        """The end of the log of an instance on a fleet host, read there (None: it runs on this
        machine, whose log file the caller reads). A host that cannot be asked says why instead."""
        read = getattr(self._d.runtime, "read_log", None)
        if read is None:
            return None
        try:
            text: str | None = await read(inst, lines)
        except ShipyardError as e:
            return f"(the log of {inst.id} cannot be read on {inst.host}: {e.message})"
        return text

    def enforcement(self) -> dict[str, str] | None:
        """What keeps instances from writing into their image trees (None: the runtime cannot say)."""
        mode = getattr(self._d.runtime, "enforcement", None)
        return mode.to_dict() if mode is not None else None

    def services(self) -> list[dict[str, Any]]:
        return [self.status(s.name) for s in self._d.store.list_services()]

    def store_refusals(self) -> dict[str, int]:
        """Store calls refused since the daemon started (disk full, foreign lock, ...), per cause."""
        return self._d.store.refusals()

    def router_restarts(self, service: str) -> int:
        """How often the service's router died and was restarted since the daemon started."""
        return self._d.router_restarts.get(service, 0)

    @property
    def audit(self) -> AuditTrail:
        """The audit log: the API appends the changes people ask for, the dashboard reads it."""
        return self._d.store.audit

    def list_services(self) -> list[ServiceRecord]:
        return self._d.store.list_services()

    def active_rollouts(self, service: str | None = None) -> list[Rollout]:
        return self._d.store.active_rollouts(service)

    def rollouts(self, service: str, limit: int = 50) -> list[Rollout]:
        return self._d.store.rollouts(service, limit)

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        return self._d.store.get_rollout(rollout_id)

    def rollout_spec(self, rollout_id: str) -> dict[str, Any] | None:
        return self._d.store.rollout_spec(rollout_id)

    def get_analysis(self, rollout_id: str) -> dict[str, Any] | None:
        return self._d.store.get_analysis(rollout_id)

    def finished_rollout_counts(self) -> list[tuple[str, str, str, str, int]]:
        return self._d.store.finished_rollout_counts()

    def finished_analysis_ids(self) -> list[str]:
        return self._d.store.finished_analysis_ids()

    def events(self, service: str | None = None, rollout_id: str | None = None, since: int = 0,
               limit: int = 500) -> list[Event]:
        return self._d.store.events(service, rollout_id, since, limit)

    def instances(self, service: str | None = None, slot: str | None = None,
                  live_only: bool = True) -> list[tuple[Instance, str]]:
        return self._d.store.instances(service, slot, live_only)

    def get_drift_report(self, service: str) -> dict[str, Any] | None:
        return self._d.store.get_drift_report(service)

    def images(self, service: str | None = None) -> list[Image]:
        """The images the store holds (of one service, if given), newest first."""
        return list(self._d.images.list(service))

    async def routing_table(self, service: str) -> RoutingTable | None:
        """The table the data plane serves now (not the one the record says)."""
        return await self._d.router.current(service)

    async def router_stats(self, service: str) -> dict[str, Any]:
        return await self._d.router.stats(service)

    def series_upto(self, service: str) -> int:
        """The last second the router's per-second series is complete to (0: none yet)."""
        return self._feed.complete_upto(service)

    def series(self, service: str, track: str, after: int, upto: int) -> list[Second]:
        """Per-second traffic of one track, idle seconds as zero (kept for KEEP_SECONDS)."""
        return self._feed.seconds(service, track, after, upto)

def _drift_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {"clean": report["clean"], "scanned_at": report["scanned_at"], "mode": report["mode"],
            "last_full_at": report.get("last_full_at"), "counts": report.get("counts", {}),
            "findings": len(report.get("findings", []))}


__all__ = ["KEEP_SECONDS", "Queries", "checklist"]
