"""A drift scan of one service: release, content, process and unmanaged checks over plain
records, returning one DriftReport. No daemon needed: the caller passes the service
record, the instance records, the image store, what each instance was started with, and
which pids and ports are shipyard's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.drift.baseline import BaselineStore
from shipyard.drift.content import ContentResult, content_findings, scan_tree
from shipyard.drift.processes import ExpectedProcess, process_findings
from shipyard.drift.release import LIVE_STATUSES, release_findings
from shipyard.drift.report import DriftFinding, DriftReport, Mode
from shipyard.drift.unmanaged import unmanaged_instances, unmanaged_listeners
from shipyard.errors import ShipyardError
from shipyard.images import ImageStore
from shipyard.rollout.records import Instance, ServiceRecord, SlotState

NOTE_PATHS = 5


@dataclass
class ServiceInputs:
    """The plain records a scan of one service works from."""

    service: ServiceRecord
    instances: list[tuple[Instance, str]]
    """Every instance record of the service with its status (stopped ones too: a stopped
    instance that still runs is unmanaged)."""
    expected: Mapping[str, ExpectedProcess] = field(default_factory=dict)
    """By instance id; an instance without an entry is only checked for being alive."""
    known_pids: set[int] = field(default_factory=set)
    """shipyard's own processes that may listen on the service's ports (its router)."""
    managed_ports: set[int] | None = None
    """Default: the service's listen port and the ports of its live instances."""
    instances_root: Path | None = None
    """<state>/instances: only processes of this state dir count as unrecorded instances."""
    in_rollout: bool = False


def listen_port(listen: str) -> int | None:
    _, _, port = listen.rpartition(":")
    return int(port) if port.isdigit() else None


def default_baselines(images: ImageStore) -> BaselineStore:
    return BaselineStore(images.root / "drift-baselines")


def _live(inputs: ServiceInputs) -> list[Instance]:
    return [i for i, s in inputs.instances if s in LIVE_STATUSES]


def _process_checks(inputs: ServiceInputs) -> tuple[list[DriftFinding], set[str]]:
    findings: list[DriftFinding] = []
    gone: set[str] = set()
    for inst, status in inputs.instances:
        if status not in LIVE_STATUSES:
            continue
        # A starting instance may still be inside a launcher (a pyenv shim execs bash, then
        # pyenv, then python): only its being alive is checked until it is healthy.
        found = process_findings(inst, None if status == "starting" else inputs.expected.get(inst.id))
        gone.update(f.instance_id for f in found if f.evidence.get("change") == "gone" and f.instance_id)
        findings.extend(found)
    return findings, gone


def _unmanaged_checks(inputs: ServiceInputs) -> list[DriftFinding]:
    svc, live = inputs.service, _live(inputs)
    ports = inputs.managed_ports
    if ports is None:
        ports = {i.port for i in live}
        if (p := listen_port(svc.listen)) is not None:
            ports.add(p)
    pids = set(inputs.known_pids) | {i.pid for i in live}
    records = {i.id: (i, s) for i, s in inputs.instances}
    return (unmanaged_listeners(svc.name, ports, pids, known_groups={i.pid for i in live})
            + unmanaged_instances(svc.name, records, inputs.instances_root))


def _images_to_check(inputs: ServiceInputs) -> dict[str, list[str]]:
    """image id -> ids of the live instances that run it (slots' images with no instance: [])."""
    out: dict[str, list[str]] = {}
    for slot in inputs.service.slots.values():
        if slot.state != SlotState.IDLE and slot.image_id:
            out.setdefault(slot.image_id, [])
    for inst in _live(inputs):
        out.setdefault(inst.image_id, []).append(inst.id)
    return out


def _content_check(images: ImageStore, service: str, image_id: str, users: list[str], mode: Mode,
                   baselines: BaselineStore) -> tuple[ContentResult | None, DriftFinding | None]:
    try:
        manifest = images.get(image_id).manifest
    except ShipyardError as exc:
        return None, DriftFinding("unknown", None, service, f"image {image_id[:12]}: manifest unreadable: "
                                  f"{exc.message}", [], {"image_id": image_id, "reason": exc.message})
    result = scan_tree(images.tree_path(image_id), manifest, image_id, mode, baselines)
    if result.tree_missing and not users:
        return None, None  # a slot's image not materialised and nothing runs from it: nothing to drift
    return result, None


async def scan_service(inputs: ServiceInputs, images: ImageStore, mode: Mode = "metadata",
                       baselines: BaselineStore | None = None, now: float | None = None) -> DriftReport:
    """Scan one service. The hashing and /proc reading run in worker threads, so the event
    loop (the daemon's API) stays responsive during a full pass."""
    began = time.perf_counter()
    svc = inputs.service
    report = DriftReport(service=svc.name, scanned_at=time.time() if now is None else now, mode=mode,
                         instances_scanned=len(_live(inputs)))
    baselines = baselines or default_baselines(images)

    async def content() -> list[tuple[ContentResult | None, DriftFinding | None, list[str]]]:
        out = []
        for image_id, users in sorted(_images_to_check(inputs).items()):
            result, problem = await asyncio.to_thread(_content_check, images, svc.name, image_id, users, mode,
                                                      baselines)
            out.append((result, problem, users))
        return out

    (proc_findings, gone), unmanaged, contents = await asyncio.gather(
        asyncio.to_thread(_process_checks, inputs), asyncio.to_thread(_unmanaged_checks, inputs), content())
    report.findings.extend(release_findings(svc, inputs.instances, gone, inputs.in_rollout, report.scanned_at))
    for result, problem, users in contents:
        if problem is not None:
            report.findings.append(problem)
        if result is None:
            continue
        report.findings.extend(content_findings(result, svc.name, users))
        report.files_checked += result.files_checked
        report.bytes_hashed += result.bytes_hashed
        if result.baseline_error:
            report.notes.append(f"image {result.image_id[:12]}: {result.baseline_error}")
        if result.metadata_only:
            shown = ", ".join(result.metadata_only[:NOTE_PATHS])
            report.notes.append(f"image {result.image_id[:12]}: metadata changed but content identical "
                                f"(not drift): {shown}"
                                + (f" and {len(result.metadata_only) - NOTE_PATHS} more"
                                   if len(result.metadata_only) > NOTE_PATHS else ""))
    report.findings.extend(proc_findings)
    report.findings.extend(unmanaged)
    report.seconds = time.perf_counter() - began
    return report


async def scan(services: list[ServiceInputs], images: ImageStore, mode: Mode = "metadata",
               baselines: BaselineStore | None = None) -> list[DriftReport]:
    """Scan several services one after the other (a full pass already uses every core)."""
    return [await scan_service(inputs, images, mode, baselines) for inputs in services]
