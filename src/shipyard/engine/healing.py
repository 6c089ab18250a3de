"""Heal by replacement, never by patching: a drifted instance is succeeded by a fresh one
started from the pristine image (its tree re-materialised from the object store when the
old one was tampered with), which takes traffic before the drifted one drains and stops.
On a fleet the tampered tree is the one on the finding's host (quarantined there) and
placement chooses the successor's host. Nothing here edits a running instance or a file of
an image tree."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.drift import DriftReport
from shipyard.engine import fleet_drift
from shipyard.engine.actions import SlotOps, spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError
from shipyard.images.build import remove_dir
from shipyard.rollout.records import Instance, SlotState

log = logging.getLogger("shipyard.healing")

REPLACEABLE = ("content", "process")
"""Kinds a replacement cures. Unmanaged processes are reported, never killed (they are not
ours); a dead instance is the supervisor's to replace; unknown needs a human."""


@dataclass
class HealResult:
    replaced: list[tuple[str, str]] = field(default_factory=list)
    """(drifted instance, its successor)"""
    stopped: list[str] = field(default_factory=list)
    """Instances of a slot that should be gone."""
    failed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"replaced": [{"drifted": a, "successor": b} for a, b in self.replaced], "stopped": self.stopped,
                "failed": self.failed, "quarantined": self.quarantined}


def heal_targets(report: DriftReport) -> tuple[set[str], set[str], set[str]]:
    """(instances to replace, instances to stop, images whose tree must be re-materialised)."""
    replace: set[str] = set()
    stop: set[str] = set()
    tampered: set[str] = set()
    for f in report.findings:
        if f.kind in REPLACEABLE and f.instance_id:
            replace.add(f.instance_id)
            if f.kind == "content" and f.evidence.get("image_id"):
                tampered.add(str(f.evidence["image_id"]))
        elif f.kind == "release" and f.instance_id and f.evidence.get("change") in ("slot_should_be_gone",
                                                                                   "unknown_slot"):
            stop.add(f.instance_id)
        elif f.kind == "release" and f.instance_id and f.evidence.get("change") == "wrong_image":
            replace.add(f.instance_id)
    return replace, stop - replace, tampered


class Healer:
    def __init__(self, deps: Deps, ops: SlotOps) -> None:
        self.d = deps
        self.ops = ops

    async def heal(self, report: DriftReport, actor: str) -> HealResult:
        service = report.service
        result = HealResult()
        replace, stop, tampered = heal_targets(report)
        if not (replace or stop):
            return result
        records = {i.id: (i, st) for i, st in self.d.store.instances(service)}
        aside: list[Path] = []
        on_hosts = fleet_drift.tampered_trees(report)
        tampered -= {image_id for _, image_id in on_hosts}   # trees on fleet hosts, not this machine's
        for address, image_id in sorted(on_hosts):
            try:
                moved = await self.d.fleet_drift.quarantine(address, image_id)
            except ShipyardError as e:      # a successor there would run from the tampered tree: not yet
                self.ops.event(service, "drift.heal_failed", f"could not quarantine the tampered tree of image "
                               f"{image_id[:12]} on {address}: {e.message}", image=image_id, host=address)
                unsafe = {iid for iid, (i, _) in records.items() if i.host == address and i.image_id == image_id}
                result.failed.extend(sorted(replace & unsafe))
                replace -= unsafe
                continue
            result.quarantined.append(f"{address}:{image_id}")
            self.ops.event(service, "drift.quarantined", f"tampered tree of image {image_id[:12]} on {address} moved "
                           f"aside{f' to {moved}' if moved else ''} (kept as evidence); instances start there from "
                           "a fresh copy", image=image_id, host=address, moved_to=moved)
        for image_id in sorted(tampered):
            moved = self.d.images.quarantine_tree(image_id)
            if moved is not None:
                aside.append(moved)
                result.quarantined.append(image_id)
                self.ops.event(service, "drift.quarantined", f"tampered tree of image {image_id[:12]} moved aside; "
                               "instances start from a fresh copy of the object store", image=image_id)
        for iid in sorted(replace):
            inst_status = records.get(iid)
            if inst_status is None or inst_status[1] not in ("healthy", "unhealthy", "starting"):
                continue
            successor = await self._replace(inst_status[0], actor)
            if successor is None:
                result.failed.append(iid)
            else:
                result.replaced.append((iid, successor))
        for iid in sorted(stop):
            inst_status = records.get(iid)
            if inst_status is not None:
                await self.ops.stop_instance(inst_status[0], 10.0, "drift: its slot should be gone")
                result.stopped.append(iid)
        for path in aside:       # every instance that ran from it has been replaced (or failed: keep nothing)
            remove_dir(path)
        return result

    async def _replace(self, drifted: Instance, actor: str) -> str | None:
        """Start the successor, route it, then drain and stop the drifted instance."""
        service, slot_name = drifted.service, drifted.slot
        svc = self.d.store.get_service(service)
        slot = svc.slots.get(slot_name) if svc else None
        if svc is None or slot is None or not slot.spec or not slot.image_id or slot.state == SlotState.IDLE:
            return None
        spec = spec_from_doc(slot.spec, svc.spec_path)
        ev = self.ops.event
        try:
            host = None if spec.fleet is None else fleet_drift.successor_host(
                spec, self.ops.lost, self.d.store.instances(service, slot_name), drifted)
            new = await self.ops.start_instance(spec, slot_name, slot.image_id, host=host)
        except ShipyardError as e:
            ev(service, "drift.heal_failed", f"could not start a successor for {drifted.id}: {e.message}",
               instance=drifted.id)
            return None
        ok, why = await self.ops.wait_ready(spec, new)
        if not ok:
            ev(service, "drift.heal_failed", f"successor {new.id} of {drifted.id} never became healthy: {why}",
               instance=drifted.id)
            await self.ops.stop_instance(new, spec.run.stop_timeout, "successor never became healthy")
            return None
        async with self.ops.lock(service):
            fresh = self.d.store.get_service(service)
            if fresh is None or fresh.slots[slot_name].image_id != slot.image_id:
                await self.ops.stop_instance(new, spec.run.stop_timeout, "slot changed while healing")
                return None
            self.d.store.set_instance_status(new.id, "healthy")
            self.d.store.set_instance_status(drifted.id, "stopping")      # leaves the table in this push
            await self.ops.push_table(fresh)
        ev(service, "drift.healed", f"{drifted.id} replaced by {new.id} (by {actor}); draining the drifted one",
           instance=drifted.id, successor=new.id)
        await self.ops.stop_instance(drifted, spec.run.stop_timeout, "drifted: replaced by a fresh instance")
        return new.id
