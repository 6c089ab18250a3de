"""A controller killed between starting an instance on a host and recording it leaves that
instance running there, known to nobody: an orphan that would run for good beside the
resumed (or rolled back) rollout. A restarted controller asks each fleet host which
instances it runs and stops those of its services that the store does not know."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shipyard.engine.actions import SlotOps
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError
from shipyard.rollout.records import ServiceRecord
from shipyard.spec import Spec


async def stop_unrecorded(d: Deps, ops: SlotOps, services: list[ServiceRecord],
                          spec_of: Callable[[dict[str, Any], str], Spec]) -> None:
    """For every host of every fleet slot: stop instances named after one of `services`
    (ids are `<service>-<slot>-<hex>`) that no service's records hold. A host that cannot
    be asked is told as an event; its instances are the lost-host machinery's then."""
    known = {i.id for svc in services for i, _ in d.store.instances(svc.name, live_only=False)}
    for svc in services:
        hosts: dict[str, float] = {}
        for slot in svc.slots.values():
            if slot.spec and slot.spec.get("fleet"):
                spec = spec_of(slot.spec, svc.spec_path)
                for h in spec.fleet.hosts or [] if spec.fleet is not None else []:
                    hosts[h.address] = max(hosts.get(h.address, 0.0), spec.run.stop_timeout)
        prefix = f"{svc.name}-"
        for address, timeout in hosts.items():
            try:
                stopped = await d.fleet.stop_unrecorded(
                    address, lambda iid, p=prefix: iid in known or not iid.startswith(p), timeout)
            except ShipyardError as e:
                ops.event(svc.name, "fleet.error", f"cannot look for unrecorded instances on {address}: {e.message}")
                continue
            if stopped:
                ops.event(svc.name, "instance.unrecorded_stopped",
                          f"stopped {len(stopped)} instance(s) on {address} that no record holds (the controller "
                          f"died between starting and recording them): {', '.join(stopped)}",
                          address=address, instances=stopped)
