"""Operations on a service's two slots: start a release into one, switch traffic to it,
keep the other warm, tear one down. The blue-green switch itself is `SlotOps.switch`.

Shared by the rollout driver and the supervisor; every change to a service record and
every table push happens here, under the service's lock, so the routing table is
always rebuilt from one consistent view."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from shipyard.engine import baseline as baseline_slot
from shipyard.engine import edge, fleet_slots
from shipyard.engine.deps import Deps
from shipyard.engine.stored_spec import spec_from_doc
from shipyard.errors import ShipyardError, StoreUnavailable
from shipyard.rollout.machines import first_release_abandoned
from shipyard.rollout.records import Instance, LaunchSpec, ServiceRecord, Slot, SlotState, host_command
from shipyard.rollout.traffic import build_table, preview_token
from shipyard.runtime.environment import release_env
from shipyard.spec import RouterSpec, Spec

__all__ = ["Deps", "SlotOps", "spec_from_doc", "sticky_of"]

log = logging.getLogger("shipyard.events")


class SlotOps:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._router_version: dict[str, int] = {}
        self.events_dropped = 0
        """Events the store refused since the last one it took (told in the log when it takes one again)."""
        self.lost: set[str] = set()
        """Addresses of fleet hosts declared lost (engine/lost_hosts.py): they get nothing new."""
        self.held: dict[str, str] = {}
        """Addresses of fleet hosts an operator is draining or removed (engine/host_states.py,
        persisted in the store): they get nothing new either, and what runs there is moved."""
        self._placing: dict[tuple[str, str], list[str]] = {}
        """Per (service, slot), hosts that an instance is being started on and not yet recorded."""

    def unusable(self) -> set[str]:
        """Fleet host addresses that take no new instance: lost, draining or removed."""
        return self.lost | set(self.held)

    def preview_token(self, service: str) -> str:
        """The secret that lets a request choose its track (preview checks send it)."""
        return preview_token(self.d.preview_secret, service)

    def lock(self, service: str) -> AbstractAsyncContextManager[Any]:
        """The store's service lock: one writer of a service's record and table at a time."""
        return self.d.store.service_lock(service)

    def event(self, service: str, kind: str, message: str, rollout_id: str | None = None,
              **data: Any) -> None:
        """Record an event. One the store refuses is dropped and counted, never raised: an
        event tells of a change, it is not the change (those are `Store.record_step` and the
        record writes, which do raise)."""
        try:
            ev = self.d.store.add_event(service, kind, message, rollout_id, data or None)
        except StoreUnavailable:
            self.events_dropped += 1
            return
        if self.events_dropped:
            log.warning("%d event(s) could not be recorded while the state store refused writes",
                        self.events_dropped)
            self.events_dropped = 0
        self.d.on_event(ev)

    def router_restarted(self, service: str, lost: dict[str, Any] | None) -> None:
        """Record a router that died and was replaced: an event (which the audit log records
        as the daemon's), and the /metrics counter, so a crash of the data plane is never invisible."""
        if lost is None:
            return
        self.d.router_restarts[service] = self.d.router_restarts.get(service, 0) + 1
        message = f"the router for {service} (pid {lost.get('pid')}) was restarted: {lost.get('reason')}"
        data = {k: lost.get(k) for k in ("pid", "exit_code", "signal")}
        self.event(service, "router.restarted", message, **data)   # the store audits it (state/audit.py)

    # -- the routing table -----------------------------------------------------------

    async def push_table(self, svc: ServiceRecord, spec: Spec | None = None) -> float:
        """Rebuild the table from the record and the instances, push it; returns seconds taken.
        Caller holds the service lock. (`spec` is accepted for callers' convenience; all
        the table needs is in the record.)"""
        t0 = time.perf_counter()
        sticky = sticky_of(svc)
        instances = self.d.store.instances(svc.name)
        for attempt in (1, 2):
            if svc.name not in self._router_version:   # the router may hold a newer table than we recorded
                current = await self.d.router.current(svc.name)
                self._router_version[svc.name] = current.version if current else 0
            version = max(svc.table_version, self._router_version[svc.name]) + 1
            table = build_table(svc, instances, version, *sticky, preview_token=self.preview_token(svc.name),
                                limits=router_limits_of(svc), tls=edge.table_tls(edge.served(self.d.paths, svc.name)))
            try:
                await self.d.router.apply(table)
                break
            except ShipyardError:
                self._router_version.pop(svc.name, None)   # restarted, or refused ours as stale: ask again
                if attempt == 2:
                    raise
        self._router_version[svc.name] = version
        svc.table_version = version
        self.d.store.put_service(svc)
        return time.perf_counter() - t0

    # -- instances -------------------------------------------------------------------

    def launch_env(self, spec: Spec, image_env: Mapping[str, str]) -> dict[str, str]:
        """What an instance of `spec` starts with; also what drift detection expects to find."""
        return release_env(spec, image_env, self.d.env)

    async def launch_spec(self, spec: Spec, slot: str, image_id: str, host: str = "127.0.0.1") -> LaunchSpec:
        image = self.d.images.get(image_id)
        # re-hashing a whole tree is CPU work: keep the event loop (and the API) responsive
        tree = await asyncio.to_thread(self.d.images.verified_tree, image_id)   # refuses a tampered image
        env = self.launch_env(spec, image.env)
        iid = f"{spec.service}-{slot}-{secrets.token_hex(3)}"
        command = host_command(image.command, host)   # argv only: run.env.HOST stays
        return LaunchSpec(instance_id=iid, service=spec.service, slot=slot, image_id=image_id, tree=tree,
                          command=command, env=env, instance_dir=self.d.paths.instance_dir(iid), host=host)

    async def start_instance(self, spec: Spec, slot: str, image_id: str, rollout_id: str | None = None,
                             host: str | None = None) -> Instance:
        """Start one instance; on a fleet, on `host` or (None) where placement has room."""
        if spec.fleet is not None:
            await self.d.fleet.use(spec.service, spec.fleet, spec.base_dir)
        placing = self._placing.setdefault((spec.service, slot), [])
        if host is None and spec.fleet is not None:
            running = [i for i, st in self.d.store.instances(spec.service, slot) if st in ("starting", "healthy")]
            host = fleet_slots.host_for_one(spec, self.unusable(), running, placing)
        placing.append(host or "127.0.0.1")
        try:
            launch = await self.launch_spec(spec, slot, image_id, host or "127.0.0.1")
            inst = await self.d.runtime.start(launch)
            try:
                self.d.store.put_instance(inst, "starting")
            except StoreUnavailable:    # an instance nobody recorded would run for good: stop it
                await self.d.runtime.stop(inst, spec.run.stop_timeout)
                raise
        finally:
            placing.remove(host or "127.0.0.1")
        self.event(spec.service, "instance.started", f"instance {inst.id} started (pid {inst.pid}, port {inst.port})",
                   rollout_id, instance=inst.id, slot=slot)
        return inst

    async def wait_ready(self, spec: Spec, inst: Instance) -> tuple[bool, str]:
        h = spec.health
        return await self.d.health.wait_healthy(inst, path=h.path, interval=h.interval, timeout=h.timeout,
                                                healthy_threshold=h.healthy_threshold,
                                                deadline_s=spec.health.start_timeout,
                                                is_alive=self.d.runtime.is_alive, exit_code=self.d.runtime.exit_code)

    async def stop_instance(self, inst: Instance, stop_timeout: float, reason: str,
                            rollout_id: str | None = None) -> None:
        self.d.store.set_instance_status(inst.id, "stopping")
        await self.d.runtime.stop(inst, stop_timeout)
        self.d.store.set_instance_status(inst.id, "stopped")
        self.event(inst.service, "instance.stopped", f"instance {inst.id} stopped ({reason})", rollout_id,
                   instance=inst.id, slot=inst.slot)

    # -- slots -----------------------------------------------------------------------

    async def start_slot(self, spec: Spec, slot: str, image_id: str, rollout_id: str | None,
                         count: int | None = None) -> str | None:
        """Bring `count` (default `spec.replicas`) healthy instances of the image up in `slot`.
        Returns None when healthy, else the reason it failed. Idempotent: instances of
        the same image already running there (a resumed rollout) are kept."""
        service = spec.service
        want = (None if spec.fleet is not None else spec.replicas) if count is None else count
        async with self.lock(service):
            svc = self.d.store.get_service(service)
            assert svc is not None
            old = svc.slots.get(slot, Slot())
            if svc.active_slot == slot:
                return f"slot {slot} is serving traffic; refusing to start a release into it"
            if old.state == SlotState.WARM and old.image_id and old.image_id != image_id:
                self.event(service, "slot.replaced",
                           f"warm slot {slot} (image {old.image_id[:12]}) is replaced by the new release; "
                           "a later rollback will start that image again", rollout_id)
            svc.slots[slot] = Slot(SlotState.STARTING, image_id, spec.to_stored_dict(), None)
            self.d.store.put_service(svc)
        return await self.scale(spec, slot, image_id, want, rollout_id)

    async def scale(self, spec: Spec, slot: str, image_id: str, want: int | None,
                    rollout_id: str | None) -> str | None:
        """Make `slot` run exactly `want` healthy instances of `image_id`: keep those that
        run it, stop the rest and any surplus, start what is missing, wait for health.
        On a fleet, placement says how many and where (`want`: None, or fewer for a canary)
        and new ones start in batches (fleet_slots.py). Returns None when done, else why not."""
        if spec.fleet is not None:
            return await fleet_slots.scale_fleet(self, spec, slot, image_id, want, rollout_id)
        assert want is not None
        service = spec.service
        keep: list[Instance] = []
        for inst, status in self.d.store.instances(service, slot):
            if (inst.image_id == image_id and status in ("healthy", "starting") and self.d.runtime.is_alive(inst)
                    and len(keep) < want):
                keep.append(inst)
            else:
                await self.retire(inst, spec.run.stop_timeout, "not part of the release in this slot", rollout_id)
        try:
            started = [await self.start_instance(spec, slot, image_id, rollout_id)
                       for _ in range(want - len(keep))]
        except StoreUnavailable:
            raise                  # not the release's fault: the driver runs this again
        except ShipyardError as e:
            return f"could not start an instance: {e.message}"
        results = await asyncio.gather(*(self.wait_ready(spec, i) for i in keep + started))
        failures = [f"{i.id}: {why}" for i, (ok, why) in zip(keep + started, results, strict=True) if not ok]
        if failures:
            return f"slot {slot} did not become healthy: " + "; ".join(failures)
        await self.mark_healthy(service, keep + started, rollout_id)
        return None

    async def retire(self, inst: Instance, stop_timeout: float, reason: str, rollout_id: str | None) -> None:
        """Out of the table first, then stopped; one on a lost host is only marked lost (its
        host does not answer, and it is never repaired in place)."""
        if inst.host in self.lost:
            self.d.store.set_instance_status(inst.id, "lost")
        else:
            self.d.store.set_instance_status(inst.id, "stopping")
        async with self.lock(inst.service):
            svc = self.d.store.get_service(inst.service)
            assert svc is not None
            await self.push_table(svc)
        if inst.host not in self.lost:
            await self.stop_instance(inst, stop_timeout, reason, rollout_id)

    async def mark_healthy(self, service: str, insts: list[Instance], rollout_id: str | None) -> None:
        """Record `insts` as healthy and push the table that routes them (their slot's track)."""
        async with self.lock(service):
            for i in insts:
                if self.d.store.instance(i.id) != (i, "healthy"):
                    self.d.store.set_instance_status(i.id, "healthy")
                    self.event(service, "instance.healthy", f"instance {i.id} is healthy", rollout_id,
                               instance=i.id)
            svc = self.d.store.get_service(service)
            assert svc is not None
            await self.push_table(svc)

    async def set_canary_weight(self, spec: Spec, slot: str, weight: float, instances: int,
                                rollout_id: str | None, baseline: bool = False) -> str | None:
        """Scale the canary slot (and with `baseline` the baseline slot) to `instances`, then give
        it `weight` percent of the users (the baseline as many) in one table swap. Returns None
        when done, else why not."""
        async with self.lock(spec.service):
            svc = self.d.store.get_service(spec.service)
            assert svc is not None
            image_id = svc.slots[slot].image_id
        if image_id is None:
            return f"slot {slot} holds no release"
        scaling = [self.scale(spec, slot, image_id, instances, rollout_id)]
        if baseline:
            scaling.append(baseline_slot.scale(self, spec, instances, rollout_id))
        whys = [w for w in await asyncio.gather(*scaling) if w is not None]
        if whys:
            return "; ".join(whys)
        async with self.lock(spec.service):
            svc = self.d.store.get_service(spec.service)
            assert svc is not None
            s = svc.slots[slot]
            before = s.weight if s.state == SlotState.CANARY else 0.0
            svc.slots[slot] = Slot(SlotState.CANARY, image_id, s.spec or spec.to_stored_dict(), None, weight, instances)
            if baseline:
                baseline_slot.take_users(svc, instances)
            seconds = await self.push_table(svc)
        self.event(spec.service, "canary.weight",
                   f"canary slot {slot} takes {weight:g}% of users (was {before:g}%, {instances} instance"
                   f"{'s' if instances != 1 else ''}) in {seconds * 1000:.1f} ms", rollout_id,
                   slot=slot, weight=weight, instances=instances)
        return None

    async def withdraw_canary(self, service: str, slot: str, rollout_id: str | None) -> None:
        """Every user off the canary slot in one table swap. The slot goes back to STARTING
        (its rollout's, taking no users) with its instances running: the teardown that
        follows stops them."""
        async with self.lock(service):
            svc = self.d.store.get_service(service)
            if svc is None or svc.slots[slot].state != SlotState.CANARY:
                return
            s = svc.slots[slot]
            svc.slots[slot] = Slot(SlotState.STARTING, s.image_id, s.spec, None)
            baseline_slot.withdraw(svc)         # in the same swap
            self.d.store.put_service(svc)
            seconds = await self.push_table(svc)
        self.event(service, "canary.withdrawn", f"canary slot {slot} takes no users (was {s.weight:g}%): every user "
                   f"is back on stable, in {seconds * 1000:.1f} ms", rollout_id, slot=slot, seconds=seconds)

    async def switch(self, spec: Spec, slot: str, rollout_id: str | None) -> float:
        """The blue-green switch: one table swap moves all unpinned traffic to `slot`.
        Returns the seconds the swap took."""
        async with self.lock(spec.service):
            svc = self.d.store.get_service(spec.service)
            assert svc is not None
            before = svc.active_slot
            if before and before != slot:
                prev = svc.slots[before]
                svc.previous_image_id, svc.previous_spec = prev.image_id, prev.spec
                svc.slots[before] = Slot(SlotState.WARM, prev.image_id, prev.spec, None)
            target = svc.slots[slot]
            svc.slots[slot] = Slot(SlotState.LIVE, target.image_id, target.spec or spec.to_stored_dict(), None)
            svc.active_slot = slot
            svc.listen = spec.listen
            seconds = await self.push_table(svc, spec)
        self.event(spec.service, "traffic.switched",
                   f"traffic switched to slot {slot} (image {(svc.slots[slot].image_id or '')[:12]}) "
                   f"in {seconds * 1000:.1f} ms", rollout_id, slot=slot, seconds=seconds)
        return seconds

    async def keep_warm(self, service: str, slot: str, delay: float, rollout_id: str | None) -> None:
        async with self.lock(service):
            svc = self.d.store.get_service(service)
            assert svc is not None
            s = svc.slots[slot]
            if s.state != SlotState.WARM:
                return
            s.retire_at = self.d.clock.now() + delay
            self.d.store.put_service(svc)
        self.event(service, "slot.warm", f"slot {slot} stays warm for {delay:g}s so rollback is a switch",
                   rollout_id, slot=slot, retire_at=s.retire_at)
        if delay <= 0:
            await self.teardown(service, slot, rollout_id, "scale_down_delay is 0")

    async def teardown(self, service: str, slot: str, rollout_id: str | None, reason: str) -> None:
        """Stop every instance of a slot that does not serve traffic. The live slot is never
        torn down. Its instances leave the table before they are signalled."""
        async with self.lock(service):
            svc = self.d.store.get_service(service)
            if svc is None or svc.active_slot == slot or slot not in svc.slots:
                return
            spec_doc = svc.slots[slot].spec
            svc.slots[slot] = Slot()
            insts = [i for i, _ in self.d.store.instances(service, slot)]
            for i in insts:
                self.d.store.set_instance_status(i.id, "stopping")
            self.d.store.put_service(svc)
            await self.push_table(svc)
        stop_timeout = spec_from_doc(spec_doc, svc.spec_path).run.stop_timeout if spec_doc else 10.0
        await asyncio.gather(*(self.stop_instance(i, stop_timeout, reason, rollout_id) for i in insts))
        self.event(service, "slot.torn_down", f"slot {slot} torn down ({reason})", rollout_id, slot=slot)

    async def unregister(self, service: str, rollout_id: str | None, reason: str) -> None:
        """Forget a service none of whose releases ever served (its first rollout failed or
        was aborted): both slots down, its router stopped so the port is free, the record
        gone; history and events stay, as with `remove`. Does nothing if the service serves
        after all or a new rollout of it has begun."""
        def ours() -> bool:
            svc = self.d.store.get_service(service)
            return svc is not None and svc.active_slot is None and not self.d.store.active_rollouts(service)

        if not ours():
            return
        for slot in ("blue", "green"):
            await self.teardown(service, slot, rollout_id, reason)
        async with self.lock(service):
            if not ours():
                return
            await self.d.router.stop(service)
            self.d.store.remove_drift_report(service)
            self.d.store.delete_service(service)
            self._router_version.pop(service, None)
        self.event(service, "service.unregistered",
                   f"service {service} unregistered: {reason}; its router is stopped and the port is free",
                   rollout_id)

    async def forget_abandoned_first_releases(self) -> None:
        """A first release that failed is stored as ended before its service is unregistered;
        a daemon killed in between left the service holding its port: finish the job."""
        for svc in self.d.store.list_services():
            if svc.active_slot is not None or self.d.store.active_rollouts(svc.name):
                continue
            last = next(iter(self.d.store.rollouts(svc.name, 1)), None)
            if last is not None and first_release_abandoned(last):
                await self.unregister(svc.name, last.id, f"its first release {last.id} {last.phase} before it "
                                      "served (finished after the daemon restarted)")


def sticky_of(svc: ServiceRecord) -> tuple[str | None, str | None, bool]:
    """How users are recognised: the canary's spec says; without a canary, the live release's
    (it does not change where traffic goes then, but it keeps the table's sticky names the same
    across a canary's start and end: on HAProxy they are configuration, so a change reloads)."""
    canary = svc.canary_slot or svc.active_slot
    slot = svc.slots.get(canary) if canary else None
    doc = slot.spec if slot is not None else None
    c = spec_from_doc(doc, svc.spec_path).strategy.canary if doc else None
    if c is None:
        return None, None, False
    return c.sticky.header, c.sticky.cookie, c.sticky.client_address


def router_limits_of(svc: ServiceRecord) -> RouterSpec | None:
    """The live release's `router` section (per-instance limit, queue, per-try timeout): the
    table serves the release that takes the traffic. None (the defaults) before any release."""
    slot = svc.slots.get(svc.active_slot) if svc.active_slot else None
    return spec_from_doc(slot.spec, svc.spec_path).router if slot is not None and slot.spec else None


