"""`shipyard hosts`: every host of every stored fleet service, as its helper reports it now,
with the services that name it and the instances the store has on it; and `hosts check`:
could each host of one service run it. Reads the store, asks the HostReports port, changes
nothing in the store (a check may leave the image shipped to a host: the next deploy there
then sends nothing).

A service's spec here is what it runs: the live slot's, or, before anything is live, the
spec of its newest rollout (a first deploy in progress, or one that failed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard.engine.actions import spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.engine.host_keys import asked_by
from shipyard.errors import NotFoundError, SpecError
from shipyard.fleet.host_status import HostReport
from shipyard.rollout.records import ServiceRecord
from shipyard.spec import Spec
from shipyard.spec.fleet import HostSpec, canonical_address


@dataclass
class _Host:
    """One address, however many services name it; reached with the first service's ssh."""

    address: str
    name: str
    spec: Spec
    services: list[str] = field(default_factory=list)
    hosts: list[HostSpec] = field(default_factory=list)


class FleetHosts:
    def __init__(self, deps: Deps) -> None:
        self._d = deps
        self.state_of: Callable[[str], str | None] = lambda _address: None
        """The engine's word on a host (draining, removed, lost: engine/host_states.py), which
        wins over what the report saw; the controller sets it."""

    def running_spec(self, svc: ServiceRecord) -> tuple[Spec | None, str | None]:
        """(spec, image id) the service runs, or its newest rollout's before anything is live."""
        live = svc.live
        if live is not None and live.spec:
            return spec_from_doc(live.spec, svc.spec_path), live.image_id
        for r in self._d.store.rollouts(svc.name, 1):
            doc = self._d.store.rollout_spec(r.id)
            if doc:
                return spec_from_doc(doc, svc.spec_path), r.image_id
        return None, None

    def fleet_services(self) -> list[tuple[str, Spec]]:
        out = []
        for svc in sorted(self._d.store.list_services(), key=lambda s: s.name):
            spec, _ = self.running_spec(svc)
            if spec is not None and spec.fleet is not None:
                out.append((svc.name, spec))
        return out

    async def hosts(self, actor: str) -> dict[str, Any]:
        """{"services": fleet services, "hosts": one entry per address, in inventory order}.
        `actor` (who asked) goes into the audit entry of a host key trusted on first contact
        (engine/host_keys.py)."""
        services = self.fleet_services()
        by_address: dict[str, _Host] = {}
        for name, spec in services:
            assert spec.fleet is not None
            for h in spec.fleet.hosts or []:
                key = canonical_address(h.address)
                entry = by_address.get(key)
                if entry is None:
                    entry = by_address[key] = _Host(h.address, h.name, spec)
                    entry.hosts.append(h)
                entry.services.append(name)
        groups: dict[int, tuple[Spec, list[HostSpec]]] = {}
        for entry in by_address.values():
            groups.setdefault(id(entry.spec), (entry.spec, []))[1].extend(entry.hosts)
        first = {id(e.spec): e.services[0] for e in by_address.values()}
        results = await asyncio.gather(*(self._report(spec, hosts, actor, first[key])
                                         for key, (spec, hosts) in groups.items()))
        reports = {canonical_address(r.address): r for batch in results for r in batch}
        on_host = self._instances_by_address()
        out = []
        for key, entry in by_address.items():
            report = reports.get(key) or HostReport(entry.name, entry.address, False, "the host was not asked")
            row = report.to_dict() | {"services": entry.services, "instances": on_host.get(key, [])}
            row["state"] = self.state_of(entry.address) or row["state"]
            out.append(row)
        return {"services": [name for name, _ in services], "hosts": out}

    def summary(self) -> list[dict[str, Any]]:
        """Every fleet host once, cheaply (the store and the Fleet port's status cache, no SSH:
        /metrics and the dashboard read it on every scrape / poll): name, address, services,
        state (draining | removed | lost from the engine, else unreachable while the runtime
        hears nothing from it, else up), seconds silent, instances per service (routable or
        starting, as the store has them)."""
        rows: dict[str, dict[str, Any]] = {}
        for name, spec in self.fleet_services():
            assert spec.fleet is not None
            for h in spec.fleet.hosts or []:
                row = rows.setdefault(canonical_address(h.address), {
                    "name": h.name, "address": h.address, "services": [], "instances": {}})
                row["services"].append(name)
        now = self._d.clock.monotonic()
        for row in rows.values():
            since = self._d.fleet.unreachable_since(row["address"])
            row["silent_seconds"] = None if since is None else max(0.0, now - since)
            row["state"] = self.state_of(row["address"]) or ("unreachable" if since is not None else "up")
        for inst, status in self._d.store.instances():
            row = rows.get(canonical_address(inst.host))
            if row is not None and status in ("starting", "healthy"):
                row["instances"][inst.service] = row["instances"].get(inst.service, 0) + 1
        return list(rows.values())

    async def _report(self, spec: Spec, hosts: list[HostSpec], actor: str, service: str) -> list[HostReport]:
        assert spec.fleet is not None
        with asked_by(actor, service):   # a key trusted on first contact is audited as this request's
            return await self._d.host_reports.report(spec.fleet.model_copy(update={"hosts": hosts}), spec.base_dir)

    def _instances_by_address(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for inst, status in self._d.store.instances():
            out.setdefault(canonical_address(inst.host), []).append(
                {"id": inst.id, "service": inst.service, "slot": inst.slot, "status": status,
                 "image_id": inst.image_id, "port": inst.port})
        return out

    async def check(self, service: str, actor: str) -> dict[str, Any]:
        """{"service", "image_id", "ok", "hosts": [HostCheck.to_dict()]}."""
        svc = self._d.store.get_service(service)
        if svc is None:
            raise NotFoundError(f"no service named {service!r}", "`shipyard status` lists the services")
        spec, image_id = self.running_spec(svc)
        if spec is None:
            raise SpecError(f"service {service!r} has no spec stored yet: nothing says which hosts it runs on",
                            "deploy it first: shipyard deploy -f FILE")
        if spec.fleet is None:
            raise SpecError(f"service {service!r} runs on this machine (its spec has no fleet section): "
                            "there are no hosts to check", "add a fleet section to its spec to run it on hosts")
        own: dict[str, set[int]] = {}
        for inst, _status in self._d.store.instances(service):
            own.setdefault(canonical_address(inst.host), set()).add(inst.pid)
        pids = {h.address: own.get(canonical_address(h.address), set()) for h in spec.fleet.hosts or []}
        with asked_by(actor, service):
            checks = await self._d.host_reports.check(spec, image_id, pids)
        return {"service": service, "image_id": image_id, "ok": all(c.ok for c in checks),
                "hosts": [c.to_dict() for c in checks]}

