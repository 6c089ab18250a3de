"""Judging what fleet hosts answered to ``drift.scan`` (fleet/remote/drift_probe.py): the
same judges as on one machine (content_findings, processes.compare, the unmanaged rules)
applied to the facts a host sent, every finding naming its host. Pure: plain dicts in,
findings out; the one report per service is ``fleet_report``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shipyard.drift.content import ContentResult, content_findings
from shipyard.drift.fleet import FleetHost, FleetInputs, on_host, unreachable
from shipyard.drift.processes import LiveProcess, compare, drift_finding, expected_remote_process, redact_arg
from shipyard.drift.release import LIVE_STATUSES, release_findings
from shipyard.drift.report import DriftFinding, DriftReport, Mode
from shipyard.drift.unmanaged import ARGV_LIMIT, TRANSIENT_STATUSES, _instance_service
from shipyard.rollout.records import Instance

NOTE_PATHS = 5
UNRECORDED = "shipyard has no record of this instance"
"""Why an instance process of the service is a stray when no record names it (the engine
drops one recorded by the time the scan ends: it was being started meanwhile)."""
PATHS_IN_EVIDENCE = 50


@dataclass
class HostVerdict:
    findings: list[DriftFinding] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    """Instances whose process is not running (release_findings counts them out)."""
    instances: int = 0
    files_checked: int = 0
    bytes_hashed: int = 0
    notes: list[str] = field(default_factory=list)


def _error(part: Any) -> str | None:
    if isinstance(part, dict) and isinstance(part.get("error"), dict):
        return str(part["error"].get("message") or part["error"].get("code") or "failed")
    return None


def _unknown(service: str, detail: str, instance_id: str | None = None, **evidence: Any) -> DriftFinding:
    return DriftFinding("unknown", instance_id, service, detail, [], dict(evidence))


def _stranger(info: dict[str, Any]) -> dict[str, Any]:
    """A process's description for evidence: secret-looking arguments lose their values."""
    out = {k: info[k] for k in ("pid", "pgrp", "uid", "user") if k in info}
    if "argv" in info:
        out["argv"] = " ".join(redact_arg(str(a)) for a in info["argv"])[:ARGV_LIMIT * 10]
    return out


def _content(inputs: FleetInputs, answer: dict[str, Any], users: dict[str, list[str]],
             verdict: HostVerdict) -> dict[str, str]:
    """Findings of each tree; returns the host path of each tree that answered."""
    trees: dict[str, str] = {}
    service = inputs.service.name
    for image_id, ids in sorted(users.items()):
        part = (answer.get("trees") or {}).get(image_id)
        why = _error(part) if part is not None else "the host did not answer for this image"
        if why is not None:
            verdict.findings.append(_unknown(service, f"image {image_id[:12]}: the tree could not be verified: "
                                             f"{why}", None, image_id=image_id, reason=why))
            continue
        assert isinstance(part, dict)
        res = ContentResult(**part)
        trees[image_id] = res.tree
        for f in content_findings(res, service, ids):
            f.evidence["host_paths"] = [f"{res.tree}/{p}" for p in f.paths[:PATHS_IN_EVIDENCE]]
            verdict.findings.append(f)
        verdict.files_checked += res.files_checked
        verdict.bytes_hashed += res.bytes_hashed
        if res.metadata_only:
            shown = ", ".join(res.metadata_only[:NOTE_PATHS])
            verdict.notes.append(f"image {image_id[:12]}: metadata changed but content identical (not drift): "
                                 f"{shown}")
        if res.baseline_error:
            verdict.notes.append(f"image {image_id[:12]}: {res.baseline_error}")
    return trees


def _process(inputs: FleetInputs, inst: Instance, status: str, got: Any, trees: dict[str, str],
             uid: int | None, verdict: HostVerdict) -> None:
    ident = {"pid": inst.pid, "start_time": inst.start_time}
    service = inst.service
    if not isinstance(got, dict):
        verdict.findings.append(_unknown(service, f"instance {inst.id}: the host did not say how its process is",
                                         inst.id, **ident, change="unreadable"))
        return
    state = got.get("state")
    if state in ("gone", "recycled"):
        why = "the pid is not running" if state == "gone" else \
            "the pid now belongs to another process (different start time)"
        evidence: dict[str, Any] = {**ident, "change": "gone", "reason": why}
        if isinstance(got.get("now"), dict):
            evidence["now"] = _stranger(got["now"])
        verdict.findings.append(DriftFinding("process", inst.id, service, f"instance {inst.id}: process gone: {why}",
                                             [], evidence))
        verdict.gone.add(inst.id)
        return
    if state != "running":
        why = _error(got) or f"state {state!r}"
        verdict.findings.append(_unknown(service, f"instance {inst.id}: cannot read process {inst.pid}: {why}",
                                         inst.id, **ident, change="unreadable", reason=why))
        return
    launch = inputs.launches.get(inst.id)
    tree = trees.get(inst.image_id)
    if launch is None or tree is None or status == "starting":
        return   # checked for being alive only (a starting one may still be inside a launcher)
    expected = expected_remote_process(inst, launch.command, launch.env, tree, uid, launch.secret_names)
    live = LiveProcess(list(got.get("argv") or []), dict(got.get("env") or {}), got.get("cwd"), got.get("uid"))
    diff = compare(expected, live)
    if diff:
        [f] = drift_finding(inst, diff)
        verdict.findings.append(DriftFinding(f.kind, f.instance_id, f.service, f"instance {inst.id}: {f.detail}",
                                             f.paths, f.evidence))


def _listeners(inputs: FleetInputs, host: FleetHost, part: Any, live: list[Instance],
               verdict: HostVerdict) -> None:
    service = inputs.service.name
    if (why := _error(part)) is not None or not isinstance(part, dict):
        verdict.findings.append(_unknown(service, f"the listeners on the service ports could not be read: {why}",
                                         reason=why))
        return
    known = set(host.known_pids) | {i.pid for i in live}
    groups = {i.pid for i in live}
    unreadable = part.get("unreadable_pids") or []
    for sock in part.get("listeners") or []:
        where = f"{sock['address']}:{sock['port']}"
        owners = [o for o in sock.get("owners") or [] if isinstance(o, dict)]
        if not owners:
            reason = (f"owner not found ({len(unreadable)} processes' descriptors are not readable)" if unreadable
                      else "owner not found (another namespace, or it just closed)")
            verdict.findings.append(_unknown(service, f"port {sock['port']}: a socket listens on {where}, {reason}",
                                             address=sock["address"], port=sock["port"], reason=reason))
            continue
        if any(o.get("pid") in known or o.get("pgrp") in groups for o in owners):
            continue
        pids = sorted(int(o["pid"]) for o in owners)
        verdict.findings.append(DriftFinding(
            "unmanaged", None, service,
            f"port {sock['port']}: pid {', '.join(map(str, pids))} listens on {where} and is not a process "
            "shipyard runs", [],
            {"change": "listener", "address": sock["address"], "port": sock["port"], "pids": pids,
             "processes": [_stranger(o) for o in owners]}))


def _strays(inputs: FleetInputs, host: FleetHost, part: Any, verdict: HostVerdict) -> None:
    """Processes of the helper's state dir carrying an instance id of this service that are not
    a recorded live instance on this host (nor one of its children)."""
    service = inputs.service.name
    if (why := _error(part)) is not None or not isinstance(part, dict):
        verdict.findings.append(_unknown(service, f"the host's instance processes could not be listed: {why}",
                                         reason=why))
        return
    records = {i.id: (i, s) for i, s in inputs.instances}
    strays: dict[tuple[str, int], list[dict[str, Any]]] = {}
    reasons: dict[tuple[str, int], str] = {}
    for proc in part.get("processes") or []:
        iid, pgrp = str(proc.get("instance_id")), int(proc.get("pgrp") or 0)
        rec = records.get(iid)
        owner = rec[0].service if rec else _instance_service(iid, proc.get("slot"))
        if owner != service:
            continue
        if rec is None:
            why = UNRECORDED
        elif rec[0].host != host.address:
            why = f"the instance is recorded on {rec[0].host}, not on this host"
        elif rec[1] in LIVE_STATUSES:
            if proc.get("pid") == rec[0].pid or pgrp == rec[0].pid:
                continue
            why = f"it claims instance {iid} but is outside that instance's process group {rec[0].pid}"
        elif rec[1] in TRANSIENT_STATUSES:
            continue
        else:
            why = f"the instance is recorded as {rec[1]} but still runs"
        strays.setdefault((iid, pgrp), []).append(proc)
        reasons[(iid, pgrp)] = why
    for (iid, pgrp), procs in sorted(strays.items()):
        pids = sorted(int(p["pid"]) for p in procs)
        verdict.findings.append(DriftFinding(
            "unmanaged", iid, service, f"instance {iid}: pid {', '.join(map(str, pids))} runs but "
            f"{reasons[(iid, pgrp)]}", [],
            {"change": "instance", "pids": pids, "process_group": pgrp, "reason": reasons[(iid, pgrp)]}))
    if part.get("unreadable_pids"):
        n = len(part["unreadable_pids"])
        verdict.findings.append(_unknown(service, f"the environment of {n} of the helper user's processes could "
                                         "not be read: an unrecorded instance among them would go unseen",
                                         pids=list(part["unreadable_pids"])[:50]))


def _files(inputs: FleetInputs, host: FleetHost, part: Any, verdict: HostVerdict) -> None:
    service = inputs.service.name
    if not host.managed_files:
        return
    if (why := _error(part)) is not None or not isinstance(part, dict):
        verdict.findings.append(_unknown(service, f"the managed files could not be checked: {why}", reason=why))
        return
    for want in host.managed_files:
        got = part.get(want.path) or {"type": "missing"}
        kind = got.get("type")
        if kind == "unreadable":
            verdict.findings.append(DriftFinding("unknown", None, service, f"{want.what} {want.path} could not be "
                                                 f"read: {got.get('reason')}", [want.path],
                                                 {"change": "managed_file", "path": want.path, **got}))
            continue
        change = None
        if kind != "file":
            change = f"is {kind}" if kind == "missing" else f"is a {kind}"
        elif got.get("sha256") != want.sha256:
            change = "has changed content"
        elif want.mode is not None and got.get("mode") != want.mode:
            change = f"has mode {got.get('mode')}, not {want.mode}"
        if change:
            verdict.findings.append(DriftFinding(
                "content", None, service, f"{want.what} {want.path} {change}", [want.path],
                {"change": "managed_file", "path": want.path, "expected_sha256": want.sha256,
                 "expected_mode": want.mode, "actual": got}))


def judge_host(inputs: FleetInputs, host: FleetHost, answer: dict[str, Any]) -> HostVerdict:
    verdict = HostVerdict()
    live = inputs.live_on(host)
    verdict.instances = len(live)
    users: dict[str, list[str]] = {}
    for inst, _ in live:
        users.setdefault(inst.image_id, []).append(inst.id)
    trees = _content(inputs, answer, users, verdict)
    procs = answer.get("processes")
    if (why := _error(procs)) is not None:
        verdict.findings.append(_unknown(inputs.service.name, f"its instance processes could not be read: {why}",
                                         reason=why))
    else:
        for inst, status in live:
            _process(inputs, inst, status, (procs or {}).get(inst.id), trees, answer.get("uid"), verdict)
    _listeners(inputs, host, answer.get("listeners"), [i for i, _ in live], verdict)
    _strays(inputs, host, answer.get("instance_processes"), verdict)
    _files(inputs, host, answer.get("files"), verdict)
    verdict.findings = on_host(host, verdict.findings)
    return verdict


def fleet_report(inputs: FleetInputs, mode: Mode, answers: Mapping[str, dict[str, Any] | str],
                 now: float | None = None, seconds: float = 0.0) -> DriftReport:
    """One report for the service; ``answers`` by host name: the host's ``drift.scan`` result,
    or why it could not be had (a string)."""
    svc = inputs.service
    report = DriftReport(service=svc.name, scanned_at=time.time() if now is None else now, mode=mode,
                         seconds=seconds)
    by_address = {h.address: h for h in inputs.hosts}
    gone: set[str] = set()
    per_host: list[DriftFinding] = []
    for host in inputs.hosts:
        answer = answers.get(host.name, "not scanned")
        if isinstance(answer, str):
            per_host.extend(unreachable(inputs, host, answer))
            continue
        try:
            verdict = judge_host(inputs, host, answer)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:   # an answer not shaped as drift.scan's
            per_host.extend(unreachable(inputs, host, f"its answer could not be read ({type(exc).__name__}: "
                                        f"{str(exc)[:200]}); is its helper of another shipyard version?"))
            continue
        per_host.extend(verdict.findings)
        gone |= verdict.gone
        report.instances_scanned += verdict.instances
        report.files_checked += verdict.files_checked
        report.bytes_hashed += verdict.bytes_hashed
        report.notes.extend(f"{host.name}: {note}" for note in verdict.notes)
    for f in release_findings(svc, inputs.instances, gone, inputs.in_rollout, report.scanned_at):
        h = by_address.get(next((i.host for i, _ in inputs.instances if i.id == f.instance_id), ""))
        report.findings.extend(on_host(h, [f]) if h is not None else [f])
    for inst, status in inputs.instances:
        if status in LIVE_STATUSES and inst.host not in by_address:
            report.findings.append(_unknown(svc.name, f"instance {inst.id} is recorded on {inst.host}, which is not "
                                            "a host of this fleet: it was not scanned", inst.id,
                                            change="unknown_host", address=inst.host))
    report.findings.extend(per_host)
    return report
