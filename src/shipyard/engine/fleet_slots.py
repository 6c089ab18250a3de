"""Where a fleet service's instances go, and how a slot's new instances start across hosts.

Placement is fleet/placement.py's: the instances of a slot that run now are its current
assignment (numbered in the store's order), lost hosts take nothing, and what `place` adds or
moves is what gets started. The target replaces `replicas`: per_host x the usable hosts, or
the total. New instances start in batches of `fleet.batch.max_parallel` (fleet/batches.py):
a batch that leaves min_healthy out of reach stops the rollout, and everything this call
started is stopped again, so a broken release leaves nothing running on the hosts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError, StoreUnavailable
from shipyard.fleet.batches import Done, Outcome, StartBatch, Stop, Wait, decide, plan_batches
from shipyard.fleet.placement import HostState, PlacementError, PlacementHost, changes, place
from shipyard.rollout.records import Instance, ServiceRecord
from shipyard.spec import Spec
from shipyard.spec.fleet import FleetSpec, PlacementSpec


class SlotOps(Protocol):
    """What of engine/actions.SlotOps a fleet slot needs (a Protocol: actions imports this module)."""

    d: Deps
    lost: set[str]

    def unusable(self) -> set[str]: ...
    def event(self, service: str, kind: str, message: str, rollout_id: str | None = None, **data: Any) -> None: ...
    async def start_instance(self, spec: Spec, slot: str, image_id: str, rollout_id: str | None = None,
                             host: str | None = None) -> Instance: ...
    async def wait_ready(self, spec: Spec, inst: Instance) -> tuple[bool, str]: ...
    async def stop_instance(self, inst: Instance, stop_timeout: float, reason: str,
                            rollout_id: str | None = None) -> None: ...
    async def retire(self, inst: Instance, stop_timeout: float, reason: str, rollout_id: str | None) -> None: ...
    async def mark_healthy(self, service: str, insts: list[Instance], rollout_id: str | None) -> None: ...


def fleet_of(spec: Spec) -> FleetSpec:
    assert spec.fleet is not None and spec.fleet.hosts is not None, "a fleet spec carries its hosts"
    return spec.fleet


def usable_hosts(spec: Spec, lost: Collection[str]) -> list[str]:
    """Addresses of the inventory's hosts that may take instances (not lost)."""
    return [h.address for h in fleet_of(spec).hosts or [] if h.address not in lost]


def target(spec: Spec, lost: Collection[str], want: int | None = None) -> int:
    """How many instances the slot runs: placement's target on the usable hosts, or `want`
    when a caller asks for fewer (a canary's share)."""
    full = fleet_of(spec).target(len(usable_hosts(spec, lost)))
    return full if want is None else min(want, full)


def _placement(spec: Spec, lost: Collection[str], want: int | None) -> PlacementSpec:
    p = fleet_of(spec).placement
    if want is not None and want < target(spec, lost):
        return PlacementSpec(total=want, max_per_host=p.max_per_host, spread=p.spread)
    return p


@dataclass(frozen=True)
class Arrangement:
    keep: list[Instance]
    drop: list[Instance]
    """Running, but on a lost or unknown host, or where placement no longer wants them."""
    new: list[str]
    """One host address per instance to start, in placement's slot order."""


def arrange(spec: Spec, lost: Collection[str], running: Sequence[Instance], pending: Sequence[str] = (),
            want: int | None = None) -> Arrangement:
    """Placement for a slot running `running`, with starts already under way on `pending` hosts."""
    hosts = fleet_of(spec).hosts or []
    by_address = {h.address: h for h in hosts}
    address_of = {h.name: h.address for h in hosts}
    current: dict[int, str] = {}
    holder: dict[int, Instance | None] = {}
    drop: list[Instance] = []
    for inst in running:
        h = by_address.get(inst.host)
        if h is None or inst.host in lost:
            drop.append(inst)
            continue
        holder[len(current)] = inst
        current[len(current)] = h.name
    for address in pending:
        if address in by_address and address not in lost:
            holder[len(current)] = None
            current[len(current)] = by_address[address].name
    placement_hosts = [PlacementHost(h.name, dict(h.labels), HostState.LOST if h.address in lost else HostState.UP)
                       for h in hosts]
    change = changes(current, place(placement_hosts, _placement(spec, lost, want), current))
    keep = [i for s in change.kept if (i := holder[s]) is not None]
    drop += [i for s in [*change.moved, *change.removed] if (i := holder[s]) is not None]
    new = [address_of[h] for h in change.added.values()]
    new += [address_of[to] for s, (_from, to) in change.moved.items() if holder[s] is not None]
    return Arrangement(keep, drop, new)


def host_for_one(spec: Spec, lost: Collection[str], running: Sequence[Instance], pending: Sequence[str]) -> str:
    """The host of one replacement: where placement has room, else the usable host running the
    fewest of the slot (a successor started beside the instance it replaces)."""
    new = arrange(spec, lost, running, pending).new
    if new:
        return new[0]
    usable = usable_hosts(spec, lost)
    if not usable:
        raise PlacementError(f"no host of {spec.service}'s fleet can take an instance: all are lost",
                             "bring a host back or add one to fleet.hosts, then deploy again")
    load = {a: 0 for a in usable}
    for a in [*(i.host for i in running), *pending]:
        if a in load:
            load[a] += 1
    return min(usable, key=lambda a: (load[a], a))


Starter = Callable[[str], Awaitable[Instance]]
Ready = Callable[[Instance], Awaitable[tuple[bool, str]]]
Stopper = Callable[[Instance, str], Awaitable[None]]
Event = Callable[..., None]


async def start_in_batches(spec: Spec, hosts: Sequence[str], already_healthy: int, tgt: int, *,
                           start: Starter, ready: Ready, stop: Stopper, event: Event,
                           slot: str) -> tuple[list[Instance], str | None]:
    """Start one instance on each of `hosts`, batch by batch. Returns the healthy ones started
    and None, or ([], why) after stopping every instance started here (min_healthy is out of reach)."""
    batch = fleet_of(spec).batch
    slots = list(range(len(hosts)))
    plan = plan_batches(slots, tgt, batch, min(already_healthy, tgt - len(slots)))
    started: dict[int, Instance] = {}
    outcomes: dict[int, Outcome] = {}
    why: dict[int, str] = {}
    begun = 0
    while True:
        decision = decide(plan, begun, outcomes)
        match decision:
            case StartBatch(index=index, members=members):
                names = [hosts[m] for m in members]
                event(f"batch {index + 1} of {len(plan.batches)}: starting {len(members)} instance(s) of slot "
                      f"{slot} on {', '.join(names)}", index=index, hosts=names, slot=slot,
                      batches=len(plan.batches))
                begun += 1
                await _run_batch(members, hosts, start, ready, started, outcomes, why)
            case Stop() as s:
                failures = "; ".join(f"{hosts[m]}: {why.get(m, 'unhealthy')}" for m in s.unhealthy)
                await asyncio.gather(*(stop(started[m], "its batch stopped the rollout")
                                       for m in s.tear_down if m in started), return_exceptions=True)
                return [], f"slot {slot} stopped at batch {begun}: {s.reason} ({failures})"
            case Done(healthy=healthy, unhealthy=unhealthy):
                await asyncio.gather(*(stop(started[m], "never became healthy") for m in unhealthy if m in started),
                                     return_exceptions=True)
                return [started[m] for m in healthy], None
            case Wait():   # outcomes come in whole batches: never reached
                raise AssertionError("a batch ended without an outcome for each instance")


async def _run_batch(members: Sequence[int], hosts: Sequence[str], start: Starter, ready: Ready,
                     started: dict[int, Instance], outcomes: dict[int, Outcome], why: dict[int, str]) -> None:
    async def one(m: int) -> None:
        try:
            inst = await start(hosts[m])
        except StoreUnavailable:
            raise
        except ShipyardError as e:
            outcomes[m], why[m] = Outcome.UNHEALTHY, f"could not start: {e.message}"
            return
        started[m] = inst
        ok, reason = await ready(inst)
        outcomes[m] = Outcome.HEALTHY if ok else Outcome.UNHEALTHY
        if not ok:
            why[m] = reason
    results = await asyncio.gather(*(one(m) for m in members), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def scale_fleet(ops: SlotOps, spec: Spec, slot: str, image_id: str, want: int | None,
                      rollout_id: str | None) -> str | None:
    """SlotOps.scale on a fleet: keep what runs the image where placement wants it, retire the
    rest, start what is missing in batches, and route the slot only once min_healthy is met."""
    d, service = ops.d, spec.service
    await d.fleet.use(service, fleet_of(spec), spec.base_dir)
    candidates: list[Instance] = []
    stale: list[Instance] = []
    for inst, status in d.store.instances(service, slot):
        fits = inst.image_id == image_id and status in ("healthy", "starting") and d.runtime.is_alive(inst)
        (candidates if fits else stale).append(inst)
    try:
        arranged = arrange(spec, ops.unusable(), candidates, want=want)
    except PlacementError as e:
        return f"cannot place slot {slot}: {e.message} ({e.hint})"
    for inst in stale + arranged.drop:
        await ops.retire(inst, spec.run.stop_timeout, "not part of the release in this slot", rollout_id)
    results = await asyncio.gather(*(ops.wait_ready(spec, i) for i in arranged.keep))
    kept = [i for i, (ok, _) in zip(arranged.keep, results, strict=True) if ok]
    for inst in [i for i in arranged.keep if i not in kept]:
        await ops.retire(inst, spec.run.stop_timeout, "not healthy: started again", rollout_id)
    hosts = arranged.new + [i.host for i in arranged.keep if i not in kept]

    async def start(host: str) -> Instance:
        return await ops.start_instance(spec, slot, image_id, rollout_id, host=host)

    async def ready(inst: Instance) -> tuple[bool, str]:
        return await ops.wait_ready(spec, inst)

    async def stop(inst: Instance, reason: str) -> None:
        await ops.stop_instance(inst, spec.run.stop_timeout, reason, rollout_id)

    def event(message: str, **data: object) -> None:
        ops.event(service, "fleet.batch", message, rollout_id, **data)

    started, why = await start_in_batches(spec, hosts, len(kept), len(kept) + len(hosts), start=start,
                                          ready=ready, stop=stop, event=event, slot=slot)
    if why is not None:
        return why
    await ops.mark_healthy(service, kept + started, rollout_id)
    return None


async def use_fleets(d: Deps, svc: ServiceRecord, spec_of: Callable[[dict[str, Any], str], Spec],
                     event: Callable[..., None]) -> None:
    """Make the runtime reach the hosts of every fleet slot of `svc` (before a restarted
    daemon asks whether their instances still run: a host it cannot reach yet would answer
    no). A failure is an event; the supervisor tries again and tells again if it changes."""
    for slot in svc.slots.values():
        if slot.spec and slot.spec.get("fleet"):
            spec = spec_of(slot.spec, svc.spec_path)
            if spec.fleet is not None:
                try:
                    await d.fleet.use(svc.name, spec.fleet, spec.base_dir)
                except ShipyardError as e:
                    event(svc.name, "fleet.error", f"cannot reach the hosts of {svc.name}: {e.message}")
