"""Drift across a fleet, as plain data: what to ask each host (``host_request``); how its
answer becomes findings naming the host and the path, gathered into one DriftReport per
service, is drift/hosts.py. No network here: an adapter (runtime/ssh/
drift_scan.py) carries each request to its host's helper and hands the answers back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shipyard.drift.processes import SECRET_LOOKING
from shipyard.drift.release import LIVE_STATUSES
from shipyard.drift.report import DriftFinding, Mode
from shipyard.rollout.records import Instance, ServiceRecord


@dataclass(frozen=True)
class ManagedFile:
    """A file shipyard writes on a host outside any image tree (the host's HAProxy config)."""

    path: str
    sha256: str
    mode: str | None = None
    """Permissions as written ("0644"); None: not compared."""
    what: str = "managed file"


@dataclass(frozen=True)
class RemoteLaunch:
    """What an instance was launched from: the image's command and the merged environment
    (image env + run env + secrets), as the engine hands them to the runtime."""

    command: list[str]
    env: dict[str, str]
    secret_names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str
    managed_files: tuple[ManagedFile, ...] = ()
    extra_ports: frozenset[int] = frozenset()
    """Ports shipyard manages on the host besides its instances' (a host-local proxy's)."""
    known_pids: frozenset[int] = frozenset()
    """shipyard's own processes on the host that may listen there (pids as the host sees them)."""


@dataclass
class FleetInputs:
    service: ServiceRecord
    instances: list[tuple[Instance, str]]
    """Every instance record of the service with its status; ``Instance.host`` is a host's address."""
    hosts: list[FleetHost]
    launches: Mapping[str, RemoteLaunch] = field(default_factory=dict)
    """By instance id; an instance without one is only checked for being alive."""
    in_rollout: bool = False

    def live_on(self, host: FleetHost) -> list[tuple[Instance, str]]:
        return [(i, s) for i, s in self.instances if s in LIVE_STATUSES and i.host == host.address]


def host_request(inputs: FleetInputs, host: FleetHost, mode: Mode) -> dict[str, Any]:
    """The arguments of the host's one ``drift.scan`` call."""
    live = inputs.live_on(host)
    procs = []
    for inst, _status in live:
        launch = inputs.launches.get(inst.id)
        names = [] if launch is None else sorted(
            n for n in (*launch.env, "PATH", "LANG", "PORT", "SHIPYARD_DATA_DIR")
            if n not in launch.secret_names and not SECRET_LOOKING.search(n))
        procs.append({"instance_id": inst.id, "pid": inst.pid, "start_time": inst.start_time,
                      "values_for": sorted(set(names) | {"SHIPYARD_INSTANCE_ID", "SHIPYARD_SLOT", "SHIPYARD_IMAGE_ID",
                                                          "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"})})
    ports = sorted({i.port for i, _ in live} | set(host.extra_ports))
    return {"mode": mode, "images": sorted({i.image_id for i, _ in live}), "processes": procs,
            "ports": ports, "files": sorted({f.path for f in host.managed_files})}


def on_host(host: FleetHost, findings: list[DriftFinding]) -> list[DriftFinding]:
    """The findings with their host named (in ``host``, the evidence and the detail)."""
    return [dataclasses.replace(f, host=host.name, detail=f"{host.name}: {f.detail}",
                                evidence={**f.evidence, "host": host.name, "host_address": host.address})
            for f in findings]


def unreachable(inputs: FleetInputs, host: FleetHost, why: str) -> list[DriftFinding]:
    """A host that could not be scanned: unknown, never clean."""
    ids = sorted(i.id for i, _ in inputs.live_on(host))
    return on_host(host, [DriftFinding(
        "unknown", None, inputs.service.name, f"could not be scanned: {why}", [],
        {"change": "unreachable", "reason": why, "instances": ids})])
