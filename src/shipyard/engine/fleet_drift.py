"""Drift of a fleet service, from the engine's side: what the hosts are asked is made of the
store's records and the slots' specs (each instance's command, ${HOST} included, and the
environment SshRuntime started it with, secret names withheld), and carried to the hosts by
the FleetDriftScan port; a heal quarantines the tampered tree on the host it was found on and
lets placement choose where the successor goes, with the drifted instance counted out."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from shipyard.drift.fleet import FleetHost, FleetInputs, RemoteLaunch
from shipyard.drift.hosts import UNRECORDED
from shipyard.drift.release import LIVE_STATUSES
from shipyard.drift.report import DriftFinding, DriftReport, Mode
from shipyard.engine import fleet_slots
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError
from shipyard.rollout.records import Instance, ServiceRecord
from shipyard.spec import Spec

LaunchEnv = Callable[[Spec, Mapping[str, str]], dict[str, str]]
"""SlotOps.launch_env: the environment an instance of a spec starts with, from its image's."""


def secret_names(spec: Spec) -> set[str]:
    """Env names whose values never leave the host (or this machine) in a drift report."""
    return set(spec.run.secret_env) | ({spec.database.url_env} if spec.database else set())


def hosts_of(specs: Iterable[Spec]) -> list[FleetHost]:
    """Every inventory host of the slots' specs, once per address (a new release may add one)."""
    seen: dict[str, FleetHost] = {}
    for spec in specs:
        for h in (spec.fleet.hosts or []) if spec.fleet is not None else []:
            seen.setdefault(h.address, FleetHost(h.name, h.address))
    return list(seen.values())


def fleet_inputs(d: Deps, launch_env: LaunchEnv, svc: ServiceRecord, specs: dict[str, Spec]) -> FleetInputs:
    """``specs`` by slot name; ``launch_env(spec, image_env)`` is what an instance starts with
    (SlotOps.launch_env). An instance whose launch cannot be told (its image is gone, a secret
    is unset in the daemon) is checked for being alive only."""
    records = d.store.instances(svc.name, live_only=False)
    launches: dict[str, RemoteLaunch] = {}
    images: dict[str, Any] = {}
    for inst, status in records:
        spec = specs.get(inst.slot)
        if spec is None or status not in LIVE_STATUSES:
            continue
        try:
            if inst.image_id not in images:          # one manifest read per image, not per instance
                images[inst.image_id] = d.images.get(inst.image_id)
            image = images[inst.image_id]
            env = launch_env(spec, image.env)
        except ShipyardError:
            continue
        launches[inst.id] = RemoteLaunch(list(image.command), dict(env), frozenset(secret_names(spec)))
    return FleetInputs(svc, records, hosts_of(specs.values()), launches,
                       in_rollout=bool(d.store.active_rollouts(svc.name)))


async def scan(d: Deps, launch_env: LaunchEnv, svc: ServiceRecord, specs: dict[str, Spec], spec: Spec,
               mode: Mode) -> DriftReport:
    """One scan of every host; ``spec`` (the live slot's) names the hosts the Fleet port makes
    reachable first, as before a start."""
    assert spec.fleet is not None
    await d.fleet.use(svc.name, spec.fleet, spec.base_dir)
    report = await d.fleet_drift.scan(fleet_inputs(d, launch_env, svc, specs), mode)
    report.findings = [f for f in report.findings if not started_meanwhile(d, f)]
    return report


def started_meanwhile(d: Deps, f: DriftFinding) -> bool:
    """An "unrecorded instance" the hosts saw that is recorded now, on that host with that
    process: it was being started while the scan ran (over SSH, the record follows the start by
    a round trip), so it is not a stranger."""
    if f.kind != "unmanaged" or f.evidence.get("change") != "instance" or not f.instance_id:
        return False
    if f.evidence.get("reason") != UNRECORDED:
        return False
    now = d.store.instance(f.instance_id)
    if now is None or now[1] not in LIVE_STATUSES or now[0].host != f.evidence.get("host_address"):
        return False
    return now[0].pid == f.evidence.get("process_group") or now[0].pid in (f.evidence.get("pids") or [])


def tampered_trees(report: DriftReport) -> set[tuple[str, str]]:
    """(host address, image id) of every image tree a content finding names on a host."""
    return {(str(f.evidence["host_address"]), str(f.evidence["image_id"])) for f in report.findings
            if f.kind == "content" and f.instance_id and f.evidence.get("host_address")
            and f.evidence.get("image_id")}


def successor_host(spec: Spec, lost: Collection[str], running: list[tuple[Instance, str]], drifted: Instance) -> str:
    """Where the successor of ``drifted`` starts: placement's choice for the slot as it will be
    once the drifted one has left (so one per host stays one per host)."""
    others = [i for i, st in running if st in ("starting", "healthy") and i.id != drifted.id]
    return fleet_slots.host_for_one(spec, lost, others, [])
