"""Hosts are cattle: a fleet host that has not answered for `fleet.lost_after` is lost.

Its instances leave the edge at once (status "lost": not routable, not counted as running)
and the supervisor replaces them on the remaining hosts as placement says; the host gets
nothing new and is never repaired in place (it comes back through a new deploy or a daemon
restart, as a fresh host). A lost host that answers again still runs the instances it had:
they are stopped then (`host.back`), never re-adopted. How long a host has been silent is the Fleet port's to say
(the SSH runtime's status polls); deciding that silence means lost is made here, once."""

from __future__ import annotations

import asyncio

from shipyard.engine.actions import SlotOps
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError
from shipyard.rollout.records import Instance
from shipyard.spec import Spec
from shipyard.spec.durations import format_duration

ON_HOST = ("starting", "healthy", "unhealthy", "stopping")
"""Statuses of an instance that may still run on its host (a stop sent to a silent host fails)."""


class LostHosts:
    def __init__(self, deps: Deps, ops: SlotOps) -> None:
        self.d = deps
        self.ops = ops
        self._told: set[tuple[str, str]] = set()
        """(service, address) whose loss was recorded for that service."""
        self._back: dict[tuple[str, str], str] = {}
        """(service, address) whose return was recorded, with the last stop failure told ("": none)."""

    def check(self, service: str, spec: Spec) -> bool:
        """Declare the silent hosts of `spec`'s fleet lost and take `service`'s instances on
        lost hosts off the edge. True when some left (the table must be pushed)."""
        fleet = spec.fleet
        if fleet is None:
            return False
        now = self.d.clock.monotonic()
        silent: dict[str, float] = {}
        for h in fleet.hosts or []:
            since = self.d.fleet.unreachable_since(h.address)
            if h.address not in self.ops.lost and since is not None and now - since >= fleet.lost_after:
                self.ops.lost.add(h.address)
                silent[h.address] = now - since
        changed = False
        for h in fleet.hosts or []:
            if h.address not in self.ops.lost:
                continue
            gone = [i for i, st in self.d.store.instances(service, live_only=False)
                    if i.host == h.address and st in ON_HOST]
            for inst in gone:
                self.d.store.set_instance_status(inst.id, "lost")
            changed |= bool(gone)
            if (service, h.address) in self._told:
                continue
            self._told.add((service, h.address))
            quiet = f"has not answered for {silent[h.address]:.0f}s" if h.address in silent else "was found lost"
            self.ops.event(service, "host.lost",
                           f"host {h.name} ({h.address}) {quiet} (lost_after {format_duration(fleet.lost_after)}): "
                           f"it is lost; {len(gone)} instance(s) of {service} leave the edge and are replaced on "
                           "the remaining hosts; it gets nothing new and is never repaired in place",
                           host=h.name, address=h.address, instances=[i.id for i in gone])
        return changed

    async def back(self, service: str, spec: Spec) -> None:
        """Stop `service`'s instances on lost hosts that answer again. They are not re-adopted
        (a lost host is never repaired in place: they were replaced elsewhere); a stop that
        fails leaves the instance lost, and the next tick tries again."""
        fleet = spec.fleet
        if fleet is None:
            return
        for h in fleet.hosts or []:
            if h.address not in self.ops.lost or self.d.fleet.unreachable_since(h.address) is not None:
                continue
            old = [i for i, st in self.d.store.instances(service, live_only=False)
                   if i.host == h.address and st == "lost"]
            if not old:
                continue
            told = self._back.get((service, h.address))
            if told is None:
                self._back[(service, h.address)] = ""
                self.ops.event(service, "host.back",
                               f"lost host {h.name} ({h.address}) answers again: its {len(old)} old instance(s) of "
                               f"{service} are stopped, not re-adopted (they were replaced elsewhere); it stays out "
                               "of placement", host=h.name, address=h.address, instances=[i.id for i in old])
            results = await asyncio.gather(*(self._stop(i, spec.run.stop_timeout) for i in old))
            failed = "; ".join(f"{i.id}: {why}" for i, why in zip(old, results, strict=True) if why)
            if failed and failed != told:          # told once per reason, not every tick
                self.ops.event(service, "host.back_stop_failed",
                               f"could not stop old instance(s) on {h.name} ({h.address}), trying again: {failed}",
                               host=h.name, address=h.address)
            self._back[(service, h.address)] = failed

    async def _stop(self, inst: Instance, timeout: float) -> str | None:
        try:
            await self.ops.stop_instance(inst, timeout, f"its host {inst.host} was lost and answers again")
        except ShipyardError as e:
            self.d.store.set_instance_status(inst.id, "lost")
            return e.message
        return None
