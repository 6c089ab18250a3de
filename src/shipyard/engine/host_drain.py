"""Moving a watched fleet slot's instances off the hosts an operator is draining (or removed):
make-before-break, so a drain under traffic fails no request.

Per slot, one move at a time: placement (without the held hosts) says where replacements go;
they start and must be healthy, and are routed, BEFORE the instances on the held hosts leave
the edge and stop. A placement that shrinks with its hosts (per_host) starts none: the
remaining hosts already run what it wants. A replacement that fails stops again, the old
instances stay where they are and serve, and the move is tried again after a pause.
Started by the supervisor's tick, so a drain interrupted by a daemon restart carries on."""

from __future__ import annotations

import asyncio
import logging

from shipyard.engine import fleet_slots
from shipyard.engine.actions import SlotOps
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError, StoreUnavailable
from shipyard.fleet.placement import PlacementError
from shipyard.rollout.records import Instance
from shipyard.spec import Spec

log = logging.getLogger("shipyard.drain")

RETRY_AFTER = 5.0
"""Seconds between tries of a move whose replacement failed (the old instances keep serving)."""


class DrainMoves:
    def __init__(self, deps: Deps, ops: SlotOps) -> None:
        self.d = deps
        self.ops = ops
        self._moving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._not_before: dict[tuple[str, str], float] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._moving.values())

    def check(self, spec: Spec, slot: str, image_id: str, replicas: int) -> bool:
        """Start moving `slot` off held hosts when it has instances there. Never changes the
        table itself (the move pushes its own), so always False."""
        key = (spec.service, slot)
        if not self.ops.held or key in self._moving or self.d.clock.monotonic() < self._not_before.get(key, 0.0):
            return False
        if not any(i.host in self.ops.held for i, st in self.d.store.instances(spec.service, slot)
                   if st in ("starting", "healthy")):
            return False
        task = asyncio.create_task(self._move(spec, slot, image_id, replicas), name=f"drain {spec.service}/{slot}")
        self._moving[key] = task
        task.add_done_callback(lambda _t: self._moving.pop(key, None))
        return False

    async def _move(self, spec: Spec, slot: str, image_id: str, replicas: int) -> None:
        key = (spec.service, slot)
        try:
            if not await self._move_once(spec, slot, image_id, replicas):
                self._not_before[key] = self.d.clock.monotonic() + RETRY_AFTER
        except StoreUnavailable:
            self._not_before[key] = self.d.clock.monotonic() + 1.0
        except ShipyardError as e:
            self.ops.event(spec.service, "host.drain_failed", f"moving slot {slot} off held hosts failed: {e.message}")
            self._not_before[key] = self.d.clock.monotonic() + RETRY_AFTER
        except Exception:
            log.exception("moving %s/%s off held hosts failed", spec.service, slot)
            self._not_before[key] = self.d.clock.monotonic() + RETRY_AFTER

    async def _move_once(self, spec: Spec, slot: str, image_id: str, replicas: int) -> bool:
        service = spec.service
        running = [i for i, st in self.d.store.instances(service, slot) if st in ("starting", "healthy")]
        leaving = [i for i in running if i.host in self.ops.held]
        staying = [i for i in running if i.host not in self.ops.held]
        try:
            hosts = fleet_slots.arrange(spec, self.ops.unusable(), staying).new[:max(0, replicas - len(staying))]
        except PlacementError as e:
            self.ops.event(service, "host.drain_failed", f"cannot move slot {slot} off held hosts: {e.message}",
                           hint=e.hint, slot=slot)
            return False
        names = ", ".join(sorted({self._name(spec, i.host) for i in leaving}))
        self.ops.event(service, "host.draining",
                       f"moving {len(leaving)} instance(s) of slot {slot} off {names}: "
                       f"{len(hosts)} replacement(s) start first" + (f" on {', '.join(hosts)}" if hosts else ""),
                       slot=slot, leaving=[i.id for i in leaving], to=hosts)
        results = await asyncio.gather(*(self.ops.start_instance(spec, slot, image_id, host=h) for h in hosts),
                                       return_exceptions=True)
        started = [r for r in results if isinstance(r, Instance)]
        ready = await asyncio.gather(*(self.ops.wait_ready(spec, i) for i in started))
        failed = [f"{h}: {r}" for h, r in zip(hosts, results, strict=True) if isinstance(r, BaseException)]
        failed += [f"{i.host}: {why}" for i, (ok, why) in zip(started, ready, strict=True) if not ok]
        if failed:
            await asyncio.gather(*(self.ops.stop_instance(i, spec.run.stop_timeout, "drain replacement failed")
                                   for i in started), return_exceptions=True)
            self.ops.event(service, "host.drain_failed",
                           f"replacement(s) for slot {slot} did not become healthy ({'; '.join(failed)}): the "
                           f"instances on {names} keep serving; trying again in {RETRY_AFTER:g}s", slot=slot)
            return False
        async with self.ops.lock(service):
            svc = self.d.store.get_service(service)
            same = svc is not None and slot in svc.slots and svc.slots[slot].image_id == image_id
        if not same:    # a rollout replaced the slot meanwhile: its own placement already avoids the held hosts
            await asyncio.gather(*(self.ops.stop_instance(i, spec.run.stop_timeout, "slot changed while draining")
                                   for i in started), return_exceptions=True)
            return True
        if started:
            await self.ops.mark_healthy(service, started, None)     # routed before anything leaves
        for inst in leaving:
            await self.ops.retire(inst, spec.run.stop_timeout, f"its host {self._name(spec, inst.host)} is "
                                  f"{self.ops.held.get(inst.host, 'held')}", None)
        self.ops.event(service, "host.drained",
                       f"slot {slot}: {len(leaving)} instance(s) moved off {names}"
                       + (f", replaced on {', '.join(hosts)}" if hosts else " (placement needs no replacement)"),
                       slot=slot, moved=[i.id for i in leaving], replacements=[i.id for i in started])
        return True

    @staticmethod
    def _name(spec: Spec, address: str) -> str:
        return next((h.name for h in (spec.fleet.hosts or []) if h.address == address), address) \
            if spec.fleet is not None else address
