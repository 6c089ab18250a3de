"""Keeps what was decided true while no rollout is running: instances of the live and
warm slots are probed, a dead or unhealthy one leaves the table and is replaced, warm
slots retire when their time is up, and a dead router is restarted.

A probe starts every `health.interval` whether or not the previous one has answered, and
its result is counted in the order the probes started: a hung instance (SIGSTOP, a
deadlock) is unhealthy `timeout + (unhealthy_threshold - 1) x interval` after it hung,
not `unhealthy_threshold x (timeout + interval)`, and a tick never waits for a probe, so
one hung instance does not slow the watch of every other one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from shipyard.engine import edge, fleet_slots, listen_sharing
from shipyard.engine.actions import SlotOps, spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.engine.host_drain import DrainMoves
from shipyard.engine.lost_hosts import LostHosts
from shipyard.errors import ShipyardError, StoreUnavailable
from shipyard.rollout.records import Instance, ProbeResult, ServiceRecord, SlotState
from shipyard.spec import Spec

log = logging.getLogger("shipyard.supervisor")

TICK = 0.25
WATCHED = (SlotState.LIVE, SlotState.WARM, SlotState.CANARY, SlotState.BASELINE)
"""Slots whose instances are kept up by the supervisor (a starting slot is its rollout's job)."""
ROUTER_CHECK_EVERY = 1.0
"""The full check (ping, table version) of each router; a router that exited is seen every TICK."""


class Supervisor:
    def __init__(self, deps: Deps, ops: SlotOps) -> None:
        self.d = deps
        self.ops = ops
        self._task: asyncio.Task[None] | None = None
        self._fails: dict[str, int] = {}
        self._oks: dict[str, int] = {}
        self._next_probe: dict[str, float] = {}
        self._probes: dict[str, deque[asyncio.Task[ProbeResult]]] = {}
        """Probes in flight per instance, oldest first."""
        self._probed: dict[tuple[str, str], set[str]] = {}
        """Instances whose probe state is kept, per (service, slot): what left the slot is forgotten."""
        self._replacing: dict[tuple[str, str], set[asyncio.Task[None]]] = {}
        self._retiring: set[tuple[str, str]] = set()
        self._router_checked: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.lost_hosts = LostHosts(deps, ops)
        self.drains = DrainMoves(deps, ops)
        self._unreachable: dict[str, str] = {}
        """Per fleet service, why its hosts cannot be reached (told once)."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="supervisor")

    async def stop(self) -> None:
        tasks = [t for ts in self._replacing.values() for t in ts] + list(self._background) + self.drains.tasks()
        tasks += [t for ts in self._probes.values() for t in ts]
        if self._task:
            tasks.append(self._task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def slot_ready(self, service: str, slot: str) -> bool:
        """A warm slot can take traffic back only if a process of it is alive and healthy."""
        return any(st == "healthy" and self.d.runtime.is_alive(i)
                   for i, st in self.d.store.instances(service, slot))

    async def _loop(self) -> None:
        while True:
            for svc in await self._services():
                try:
                    await self._tick(svc)
                except StoreUnavailable:
                    pass                    # logged by the store; the next tick tries again
                except ShipyardError as e:
                    self.ops.event(svc.name, "supervisor.error", e.message)
                except Exception:
                    log.exception("supervisor tick for %s failed", svc.name)
            await self.d.clock.sleep(TICK)

    async def _services(self) -> list[ServiceRecord]:
        try:
            return self.d.store.list_services()
        except StoreUnavailable:
            return []

    async def _tick(self, svc: ServiceRecord) -> None:
        now = self.d.clock.monotonic()
        if self.d.router.exited(svc.name) or now - self._router_checked.get(svc.name, 0.0) >= ROUTER_CHECK_EVERY:
            self._router_checked[svc.name] = now
            await self._check_router(svc)
        changed = False
        for slot_name, slot in svc.slots.items():
            if slot.state not in WATCHED or not slot.spec or not slot.image_id:
                continue
            if slot.state == SlotState.WARM and slot.retire_at and slot.retire_at <= self.d.clock.now():
                self._retire(svc.name, slot_name)
                continue
            spec = spec_from_doc(slot.spec, svc.spec_path)
            replicas = slot.replicas or spec.replicas
            if spec.fleet is not None:      # its hosts reachable (after a restart too), the silent ones lost
                if not await self._reach(svc.name, spec):
                    continue
                changed |= self.lost_hosts.check(svc.name, spec)
                await self.lost_hosts.back(svc.name, spec)
                replicas = fleet_slots.target(spec, self.ops.unusable(), slot.replicas)
                changed |= self.drains.check(spec, slot_name, slot.image_id, replicas)
            changed |= await self._watch_slot(spec, slot_name, slot.image_id, replicas)
        if changed:
            async with self.ops.lock(svc.name):
                fresh = self.d.store.get_service(svc.name)
                if fresh is not None:
                    await self.ops.push_table(fresh)

    async def _reach(self, service: str, spec: Spec) -> bool:
        """Fleet.use for the slot's hosts; when it fails, the slot is not watched (its instances
        would look dead from here) and the reason is told once, not every tick."""
        assert spec.fleet is not None
        try:
            await self.d.fleet.use(service, spec.fleet, spec.base_dir)
        except ShipyardError as e:
            if self._unreachable.get(service) != e.message:
                self._unreachable[service] = e.message
                self.ops.event(service, "fleet.error", f"cannot reach the hosts of {service}: {e.message}")
            return False
        self._unreachable.pop(service, None)
        return True

    async def _check_router(self, svc: ServiceRecord) -> None:
        """Under the service's lock, from a fresh record: a service removed or unregistered
        since this tick began must not get its router (and port) back."""
        async with self.ops.lock(svc.name):
            fresh = self.d.store.get_service(svc.name)
            if fresh is None:
                return
            self.ops.router_restarted(fresh.name, await self.d.router.ensure(
                fresh.name, fresh.listen, redirect_http=edge.redirect_of(self.d.paths, fresh.name),
                domains=listen_sharing.served_domains(self.d.store, fresh)))
            table = await self.d.router.current(fresh.name)
            if table is None or table.version < fresh.table_version:
                await self.ops.push_table(fresh)
                self.ops.event(svc.name, "router.restored", "router had an older table; current table pushed")

    async def _watch_slot(self, spec: Spec, slot: str, image_id: str, replicas: int) -> bool:
        """Probe due instances, drop the dead and unhealthy, start replacements. True if
        the set of routable instances changed."""
        service = spec.service
        h = spec.health
        changed = False
        insts = [(i, st) for i, st in self.d.store.instances(service, slot) if st in ("healthy", "unhealthy")]
        current = {i.id for i, _st in insts}
        for gone in self._probed.get((service, slot), set()) - current:
            self._forget(gone)              # stopped by a rollout or a teardown: its probes end with it
        self._probed[(service, slot)] = current
        answered: list[tuple[Instance, ProbeResult]] = []
        for inst, _st in insts:
            if not self.d.runtime.is_alive(inst):
                self.d.store.set_instance_status(inst.id, "dead")
                self.ops.event(service, "instance.died", f"instance {inst.id} (pid {inst.pid}) exited; replacing it",
                               instance=inst.id, slot=slot)
                self._forget(inst.id)
                changed = True
                continue
            answered += [(inst, res) for res in self._answers(inst.id)]
            self._probe_if_due(inst, h.path, h.timeout, h.interval)
        status = dict((i.id, st) for i, st in insts)
        for inst, res in answered:
            if inst.id not in self._next_probe:       # already found unhealthy by an earlier answer
                continue
            if res.ok:
                self._oks[inst.id] = self._oks.get(inst.id, 0) + 1
                self._fails[inst.id] = 0
            else:
                self._fails[inst.id] = self._fails.get(inst.id, 0) + 1
                self._oks[inst.id] = 0
            if status[inst.id] == "healthy" and self._fails[inst.id] >= h.unhealthy_threshold:
                self.ops.event(service, "instance.unhealthy",
                               f"instance {inst.id} failed {h.unhealthy_threshold} health checks "
                               f"({res.error or res.status}); replacing it", instance=inst.id, slot=slot)
                self.d.store.set_instance_status(inst.id, "unhealthy")
                self._forget(inst.id)
                changed = True
                self._spawn(self.ops.stop_instance(inst, spec.run.stop_timeout, "unhealthy"))
        alive = sum(1 for i, st in self.d.store.instances(service, slot) if st in ("healthy", "starting"))
        pending = self._replacing.setdefault((service, slot), set())
        missing = replicas - alive - len([t for t in pending if not t.done()])
        for _ in range(max(0, missing)):
            t = asyncio.create_task(self._replace(spec, slot, image_id))
            pending.add(t)
            t.add_done_callback(pending.discard)
        return changed

    async def _replace(self, spec: Spec, slot: str, image_id: str) -> None:
        with contextlib.suppress(StoreUnavailable):     # the next tick starts another
            await self._replace_once(spec, slot, image_id)

    async def _replace_once(self, spec: Spec, slot: str, image_id: str) -> None:
        try:
            inst = await self.ops.start_instance(spec, slot, image_id)
        except ShipyardError as e:
            self.ops.event(spec.service, "instance.replace_failed", f"could not replace an instance of {slot}: {e}")
            await self.d.clock.sleep(spec.health.interval)
            return
        ok, why = await self.ops.wait_ready(spec, inst)
        if not ok:
            self.ops.event(spec.service, "instance.replace_failed", f"replacement {inst.id} not healthy: {why}")
            await self.ops.stop_instance(inst, spec.run.stop_timeout, "replacement never became healthy")
            return
        while True:
            try:
                if not await self._route_replacement(spec, slot, image_id, inst):
                    return
                break
            except StoreUnavailable:        # healthy, and worth keeping: record it when the store writes
                await self.d.clock.sleep(1.0)
        self.ops.event(spec.service, "instance.replaced", f"replacement {inst.id} is healthy and routed",
                       instance=inst.id, slot=slot)

    async def _route_replacement(self, spec: Spec, slot: str, image_id: str, inst: Instance) -> bool:
        async with self.ops.lock(spec.service):
            svc = self.d.store.get_service(spec.service)
            if svc is None or svc.slots[slot].image_id != image_id:
                await self.ops.stop_instance(inst, spec.run.stop_timeout, "slot changed while replacing")
                return False
            self.d.store.set_instance_status(inst.id, "healthy")
            await self.ops.push_table(svc)
        return True

    def _retire(self, service: str, slot: str) -> None:
        key = (service, slot)
        if key in self._retiring:
            return
        self._retiring.add(key)

        async def run() -> None:
            try:
                await self.ops.teardown(service, slot, None, "scale_down_delay elapsed; rollback now redeploys")
            finally:
                self._retiring.discard(key)
        self._spawn(run())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Background work the tick must not wait for, kept referenced until done. Work the
        store refused is dropped (the store logged why; the next tick sees what is left)."""
        async def run() -> None:
            try:
                await work
            except StoreUnavailable:
                pass
            except ShipyardError as e:      # e.g. a stop sent to a silent fleet host: the next tick sees what is left
                log.warning("background work failed: %s", e.message)
        t = asyncio.create_task(run())
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def _probe_if_due(self, inst: Instance, path: str, timeout: float, interval: float) -> None:
        """Start a probe on the instance's cadence: start to start, never a burst to catch up."""
        now = self.d.clock.monotonic()
        due = self._next_probe.get(inst.id, 0.0)
        if now < due:
            return
        self._next_probe[inst.id] = max(due + interval, now)
        task = asyncio.create_task(self.d.health.check(inst, path, timeout), name=f"probe {inst.id}")
        self._probes.setdefault(inst.id, deque()).append(task)

    def _answers(self, iid: str) -> list[ProbeResult]:
        """The answered probes of an instance, in the order they started (a later probe's
        answer waits for the earlier ones, so "consecutive" means what it says)."""
        inflight = self._probes.get(iid)
        out: list[ProbeResult] = []
        while inflight and inflight[0].done():
            task = inflight.popleft()
            if task.cancelled():
                continue
            error = task.exception()
            out.append(task.result() if error is None else
                       ProbeResult(ok=False, status=None, error=f"probe failed: {error}", seconds=0.0))
        return out

    def _forget(self, iid: str) -> None:
        self._fails.pop(iid, None)
        self._oks.pop(iid, None)
        self._next_probe.pop(iid, None)
        for task in self._probes.pop(iid, ()):
            task.cancel()
