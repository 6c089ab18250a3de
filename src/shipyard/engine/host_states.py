"""`shipyard hosts drain | undrain | remove HOST`: an operator takes a fleet host out of
placement, or puts it back. The state is the store's (Store.put_host_state: it outlives the
daemon) and SlotOps.held's (what placement reads every tick); moving what runs there is
engine/host_drain.py's, in the supervisor, so the command returns at once and a restart
carries the move on.

States: draining (gets nothing new, what runs there is moved), removed (empty and gets
nothing, though the spec may still list it until the next deploy). A host is named by its
name or address in any stored fleet service's spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.engine.actions import SlotOps
from shipyard.engine.deps import Deps
from shipyard.engine.fleet_hosts import FleetHosts
from shipyard.engine.lost_hosts import ON_HOST
from shipyard.errors import ConflictError, NotFoundError
from shipyard.spec.fleet import canonical_address

DRAINING, REMOVED = "draining", "removed"


@dataclass
class _Named:
    name: str
    address: str
    services: list[str] = field(default_factory=list)


class HostStates:
    def __init__(self, deps: Deps, ops: SlotOps, hosts: FleetHosts) -> None:
        self.d = deps
        self.ops = ops
        self._hosts = hosts

    def load(self) -> None:
        """The held hosts as the store has them (a daemon start)."""
        self.ops.held = self.d.store.host_states()

    def state_of(self, address: str) -> str | None:
        """draining | removed | lost, or None (up as far as the engine knows)."""
        if address in self.ops.held:
            return self.ops.held[address]
        return "lost" if address in self.ops.lost else None

    def resolve(self, host: str) -> _Named:
        found: _Named | None = None
        for service, spec in self._hosts.fleet_services():
            assert spec.fleet is not None
            for h in spec.fleet.hosts or []:
                if host in (h.name, h.address) or canonical_address(host) == canonical_address(h.address):
                    found = found or _Named(h.name, h.address)
                    if found.address == h.address:
                        found.services.append(service)
        if found is None:
            raise NotFoundError(f"no fleet host named {host!r} in any deployed service's fleet.hosts",
                                "`shipyard hosts` lists the hosts by name and address")
        return found

    def instances_on(self, address: str) -> list[dict[str, Any]]:
        return [{"id": i.id, "service": i.service, "slot": i.slot, "status": st}
                for i, st in self.d.store.instances(live_only=False) if i.host == address and st in ON_HOST]

    def show(self, host: str) -> dict[str, Any]:
        """Cheap (store only, no SSH): what `hosts drain` polls until the host is empty."""
        h = self.resolve(host)
        return {"name": h.name, "address": h.address, "services": h.services,
                "state": self.state_of(h.address) or "up", "instances": self.instances_on(h.address)}

    def drain(self, host: str) -> dict[str, Any]:
        h = self.resolve(host)
        self._put(h, DRAINING)
        for service in h.services:
            self.ops.event(service, "host.draining", f"host {h.name} ({h.address}) is draining: it gets nothing "
                           "new, and its instances are moved to other hosts (each replacement healthy and routed "
                           "before the old one leaves)", host=h.name, address=h.address)
        return self.show(host)

    def undrain(self, host: str) -> dict[str, Any]:
        h = self.resolve(host)
        self._put(h, None)
        for service in h.services:
            self.ops.event(service, "host.undrained", f"host {h.name} ({h.address}) takes instances again "
                           "(placement may use it from the next start)", host=h.name, address=h.address)
        return self.show(host)

    def remove(self, host: str) -> dict[str, Any]:
        h = self.resolve(host)
        running = self.instances_on(h.address)
        if running:
            ids = ", ".join(i["id"] for i in running[:5]) + (" ..." if len(running) > 5 else "")
            raise ConflictError(f"host {h.name} ({h.address}) still runs {len(running)} instance(s) ({ids})",
                                f"drain it first: shipyard hosts drain {h.name}; then remove it")
        self._put(h, REMOVED)
        for service in h.services:
            self.ops.event(service, "host.removed", f"host {h.name} ({h.address}) is removed: it takes nothing, "
                           "though the spec still lists it; remove it from fleet.hosts at the next deploy",
                           host=h.name, address=h.address)
        return self.show(host) | {"message": f"host {h.name} is removed and takes nothing; remove it from "
                                             "fleet.hosts in the spec at the next deploy"}

    def _put(self, h: _Named, state: str | None) -> None:
        self.d.store.put_host_state(h.address, state)
        if state is None:
            self.ops.held.pop(h.address, None)
        else:
            self.ops.held[h.address] = state
