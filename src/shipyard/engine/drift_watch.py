"""The Drift test, continuously: every service is scanned on its `drift.interval` (a
metadata pass) and `drift.full_interval` (a full re-hash), the last report is kept in the
store, a change of verdict goes to the event log, and with `drift.heal: true` drifted
instances are replaced - at most once per instance per interval, backing off when a heal
does not take. A fleet service is scanned on its hosts (engine/fleet_drift.py), the same
report kept the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from shipyard.drift import DriftReport, ServiceInputs, expected_process, scan_service
from shipyard.drift.release import LIVE_STATUSES
from shipyard.drift.report import Mode
from shipyard.engine import fleet_drift
from shipyard.engine.actions import SlotOps, spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.engine.healing import Healer, HealResult, heal_targets
from shipyard.errors import NotFoundError, ShipyardError, StoreUnavailable
from shipyard.rollout.records import ServiceRecord, SlotState
from shipyard.spec import Spec

log = logging.getLogger("shipyard.drift")

TICK = 1.0
DAEMON = "shipyard-daemon"


class DriftWatcher:
    def __init__(self, deps: Deps, ops: SlotOps) -> None:
        self.d = deps
        self.ops = ops
        self.healer = Healer(deps, ops)
        self._task: asyncio.Task[None] | None = None
        self._next: dict[tuple[str, str], float] = {}          # (service, mode) -> monotonic time due
        self._healed_at: dict[str, float] = {}                 # drifted instance -> last heal attempt
        self._backoff: dict[str, float] = {}                   # service -> seconds to wait after a failed heal
        self._locks: dict[str, asyncio.Lock] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="drift watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    # -- one scan ------------------------------------------------------------------------

    def _spec(self, svc: ServiceRecord) -> Spec | None:
        for name in (svc.active_slot, *svc.slots):
            slot = svc.slots.get(name) if name else None
            if slot is not None and slot.spec:
                return spec_from_doc(slot.spec, svc.spec_path)
        return None

    def _inputs(self, svc: ServiceRecord) -> ServiceInputs:
        records = self.d.store.instances(svc.name, live_only=False)
        specs = {name: spec_from_doc(slot.spec, svc.spec_path) for name, slot in svc.slots.items() if slot.spec}
        images: dict[str, Any] = {}
        expected = {}
        for inst, status in records:
            spec = specs.get(inst.slot)
            if spec is None or status not in LIVE_STATUSES:
                continue
            try:
                if inst.image_id not in images:          # one manifest read per image, not per instance
                    images[inst.image_id] = self.d.images.get(inst.image_id)
                image = images[inst.image_id]
                env = self.ops.launch_env(spec, image.env)
            except ShipyardError:
                continue          # checked for being alive only; a missing secret is not drift of the instance
            expected[inst.id] = expected_process(inst, image.command, env, self.d.images.tree_path(inst.image_id),
                                                 fleet_drift.secret_names(spec))
        return ServiceInputs(service=svc, instances=records, expected=expected, known_pids=self.d.router.pids(svc.name),
                             instances_root=self.d.paths.instances,
                             in_rollout=bool(self.d.store.active_rollouts(svc.name)))

    async def scan(self, service: str, mode: Mode = "metadata") -> DriftReport:
        svc = self.d.store.get_service(service)
        if svc is None:
            raise NotFoundError(f"no service {service}", "shipyard status lists the services")
        spec = self._spec(svc)
        async with self._locks.setdefault(service, asyncio.Lock()):
            if spec is not None and spec.fleet is not None:     # its instances run on the hosts: ask them
                specs = {name: spec_from_doc(slot.spec, svc.spec_path) for name, slot in svc.slots.items()
                         if slot.spec}
                report = await fleet_drift.scan(self.d, self.ops.launch_env, svc, specs, spec, mode)
            else:
                report = await scan_service(self._inputs(svc), self.d.images, mode)
        previous = self.d.store.get_drift_report(service)
        self.d.store.put_drift_report(service, report.to_dict())
        self._announce(report, previous)
        return report

    def _announce(self, report: DriftReport, previous: dict[str, Any] | None) -> None:
        was_clean = previous is None or previous.get("clean", True)
        if not report.clean:
            details = "; ".join(f.detail for f in report.findings[:3])
            more = f" (+{len(report.findings) - 3} more)" if len(report.findings) > 3 else ""
            before = {(f["kind"], f.get("instance_id"), f["detail"]) for f in (previous or {}).get("findings", [])}
            if was_clean or {(f.kind, f.instance_id, f.detail) for f in report.findings} != before:
                self.ops.event(report.service, "drift.found", f"drift found ({report.mode} scan): {details}{more}",
                               counts={k: report.count(k) for k in ("release", "content", "process", "unmanaged",
                                                                     "unknown")})
        elif not was_clean:
            self.ops.event(report.service, "drift.cleared", f"no drift any more ({report.mode} scan)")

    # -- heal ----------------------------------------------------------------------------

    async def fix(self, service: str, mode: Mode = "metadata", actor: str = DAEMON) -> dict[str, Any]:
        """Scan, replace what drifted, scan again: `shipyard drift --fix`."""
        if self.d.store.active_rollouts(service):
            raise ShipyardError(f"a rollout of {service} is in progress; drift is fixed when it has ended",
                                "run drift --fix again afterwards")
        before = await self.scan(service, mode)
        result = await self.healer.heal(before, actor) if not before.clean else HealResult()
        after = await self.scan(service, mode) if (result.replaced or result.stopped) else before
        return {"before": before.to_dict(), "heal": result.to_dict(), "after": after.to_dict()}

    async def _auto_heal(self, spec: Spec, report: DriftReport) -> None:
        now = self.d.clock.monotonic()
        replace, stop, _ = heal_targets(report)
        due = {i for i in replace | stop if now - self._healed_at.get(i, -1e9) >= spec.drift.interval}
        if not due or now < self._backoff.get(spec.service, 0.0) or self.d.store.active_rollouts(spec.service):
            return
        for iid in due:
            self._healed_at[iid] = now
        result = await self.healer.heal(report, DAEMON)
        if result.failed:
            wait = min(max(2 * (self._backoff.get(spec.service, now) - now), spec.drift.interval),
                       10 * spec.drift.interval)
            self._backoff[spec.service] = now + wait
        elif result.replaced or result.stopped:
            self._backoff.pop(spec.service, None)
            await self.scan(spec.service, report.mode)

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            for svc in self.d.store.list_services():
                try:
                    await self._tick(svc)
                except StoreUnavailable:
                    pass            # the report is written again by the next scan; the store logs why not
                except ShipyardError as e:
                    self.ops.event(svc.name, "drift.error", f"drift scan failed: {e.message}")
                except Exception:
                    log.exception("drift scan of %s failed", svc.name)
            await self.d.clock.sleep(TICK)

    async def _tick(self, svc: ServiceRecord) -> None:
        spec = self._spec(svc)
        if spec is None or not any(s.state != SlotState.IDLE for s in svc.slots.values()):
            return
        now = self.d.clock.monotonic()
        full_due = self._next.setdefault((svc.name, "full"), now + spec.drift.full_interval)
        meta_due = self._next.setdefault((svc.name, "metadata"), now + min(spec.drift.interval, 5.0))
        if now < min(full_due, meta_due):
            return
        mode: Mode = "full" if now >= full_due else "metadata"
        self._next[(svc.name, "metadata")] = now + spec.drift.interval
        if mode == "full":
            self._next[(svc.name, "full")] = now + spec.drift.full_interval
        report = await self.scan(svc.name, mode)
        if spec.drift.heal and not report.clean:
            await self._auto_heal(spec, report)
