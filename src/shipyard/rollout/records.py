"""Value types shared by the engine, its ports and their adapters: what the daemon remembers
about each service, its instances, events and audit entries. Plain data, no I/O, so every
layer may import them without pulling in an adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class SlotState:
    IDLE = "idle"          # nothing running
    STARTING = "starting"  # a rollout is bringing it up
    LIVE = "live"          # receives the traffic
    WARM = "warm"          # stopped serving, kept up until retire_at so rollback is a switch
    CANARY = "canary"      # takes `weight` percent of users beside the live slot
    BASELINE = "baseline"  # the stable release, started with the canary: takes as many users as it


BASELINE_SLOT = "baseline"
"""The slot of a canary's baseline (strategy.canary.baseline): a fresh copy of the stable
release, as old and as loaded per instance as the canary, so the judge compares like with like."""

BASELINE_MAX_WEIGHT = 50.0
"""Above this canary weight there are not enough users left for an equal baseline: the baseline
takes none and the canary is judged against stable."""


@dataclass
class Slot:
    state: str = SlotState.IDLE
    image_id: str | None = None
    spec: dict[str, Any] | None = None      # the spec of the release in this slot (json form)
    retire_at: float | None = None
    weight: float = 0.0                      # canary: percent of users it takes
    replicas: int | None = None              # instances to keep, when not the spec's replicas (canary)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Slot:
        return cls(d.get("state", SlotState.IDLE), d.get("image_id"), d.get("spec"), d.get("retire_at"),
                   float(d.get("weight") or 0.0), d.get("replicas"))


@dataclass
class ServiceRecord:
    name: str
    listen: str
    spec_path: str = ""
    active_slot: str | None = None
    table_version: int = 0
    slots: dict[str, Slot] = field(default_factory=lambda: {"blue": Slot(), "green": Slot()})
    previous_image_id: str | None = None     # the release that served before the live one
    previous_spec: dict[str, Any] | None = None
    updated_at: float = 0.0

    @property
    def live(self) -> Slot | None:
        return self.slots.get(self.active_slot) if self.active_slot else None

    def slots_json(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies each slot's spec, a measurable part of a switch
        return {k: {"state": v.state, "image_id": v.image_id, "spec": v.spec, "retire_at": v.retire_at,
                    "weight": v.weight, "replicas": v.replicas} for k, v in self.slots.items()}

    @property
    def canary_slot(self) -> str | None:
        return next((k for k, v in self.slots.items() if v.state == SlotState.CANARY), None)

    @property
    def baseline(self) -> Slot | None:
        """The baseline slot while it runs for a canary, else None."""
        s = self.slots.get(BASELINE_SLOT)
        return s if s is not None and s.state == SlotState.BASELINE else None


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    service: str
    rollout_id: str | None
    kind: str
    message: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Instance:
    """One running copy of an image. (pid, start_time) identifies the process across
    daemon restarts: a recycled pid has a different start time."""

    id: str
    service: str
    slot: str
    image_id: str
    host: str
    port: int
    pid: int
    start_time: int
    log_path: str
    data_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one instance; built by the controller from spec + image."""

    instance_id: str
    service: str
    slot: str
    image_id: str
    tree: Path                   # read-only, already verified image tree (cwd of the process)
    command: list[str]           # host_command(image command, host): may contain ${PORT} and ${SHIPYARD_DATA_DIR}
    env: dict[str, str]          # image env + run env + secret env, already merged
    instance_dir: Path           # holds `log` and `data/`
    host: str = "127.0.0.1"


def host_command(command: list[str], host: str) -> list[str]:
    """run.command with ``${HOST}`` as the address of the host the instance runs on (argv only:
    run.env's HOST stays). The engine's launch_spec makes a LaunchSpec's command with it and
    drift's expectations (one machine and fleet hosts) do the same, so they cannot disagree."""
    return [a.replace("${HOST}", host) for a in command]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    service: str | None
    rollout_id: str | None
    why: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PendingChange:
    """A change asked for through the API while it is being carried out. It goes into the
    log before the first consequence the daemon records for its service (a rollback or an
    abort may be over before its request returns), and takes the id of the rollout it
    starts; a request refused before any consequence leaves no entry (nothing changed)."""

    actor: str
    action: str
    service: str | None
    why: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    rollout_id: str | None = None
    entry: AuditEntry | None = None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None
    error: str | None
    seconds: float

    def describe(self, path: str) -> str:
        """E.g. 'GET /healthz -> 500' or 'GET /healthz -> connection refused'."""
        return f"GET {path} -> {self.status if self.status is not None else self.error}"
