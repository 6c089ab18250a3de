"""The rollout as data: what is persisted, what the machine observes and what it asks for.

Kept free of I/O so a rollout can be stored as a row, resumed after a crash, and
unit-tested exhaustively."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    BUILDING = "building"
    STARTING = "starting"              # new slot's instances starting, waiting to be healthy
    PREVIEWING = "previewing"          # preview checks through the preview route
    AWAITING_PROMOTION = "awaiting_promotion"
    SWITCHING = "switching"            # table swap in flight
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED)


class Kind(StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"


SLOTS = ("blue", "green")


def other_slot(slot: str | None) -> str:
    return "green" if slot == "blue" else "blue"


@dataclass(frozen=True)
class Rollout:
    id: str
    service: str
    kind: Kind
    phase: Phase
    target_slot: str
    previous_slot: str | None          # the slot serving when the rollout began (None on first deploy)
    image_id: str | None               # None until built
    previous_image_id: str | None
    auto_promote: bool = True
    owns_target: bool = True           # False when switching back to a warm slot this rollout did not start
    reason: str = ""                   # why it ended the way it did (failed / aborted / no-op)
    created_at: float = 0.0
    updated_at: float = 0.0
    phase_started_at: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)   # phase -> seconds spent

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = str(self.kind)
        d["phase"] = str(self.phase)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        d = dict(d)
        d["kind"] = Kind(d["kind"])
        d["phase"] = Phase(d["phase"])
        d["timings"] = dict(d.get("timings") or {})
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def enter(self, phase: Phase, now: float, reason: str | None = None) -> Rollout:
        timings = dict(self.timings)
        timings[str(self.phase)] = round(timings.get(str(self.phase), 0.0) + max(0.0, now - self.phase_started_at), 6)
        return replace(self, phase=phase, updated_at=now, phase_started_at=now, timings=timings,
                       reason=self.reason if reason is None else reason)


# -- what the machine observes -------------------------------------------------

@dataclass(frozen=True)
class Built:
    image_id: str
    live_image_id: str | None          # image serving now, to detect a no-op deploy


@dataclass(frozen=True)
class BuildFailed:
    reason: str


@dataclass(frozen=True)
class SlotHealthy:
    slot: str


@dataclass(frozen=True)
class SlotFailed:
    slot: str
    reason: str


@dataclass(frozen=True)
class PreviewPassed:
    pass


@dataclass(frozen=True)
class PreviewFailed:
    reason: str


@dataclass(frozen=True)
class PromoteRequested:
    pass


@dataclass(frozen=True)
class AbortRequested:
    reason: str = "aborted by user"


@dataclass(frozen=True)
class Switched:
    slot: str


@dataclass(frozen=True)
class SwitchFailed:
    reason: str


Observation = (Built | BuildFailed | SlotHealthy | SlotFailed | PreviewPassed | PreviewFailed
               | PromoteRequested | AbortRequested | Switched | SwitchFailed)


# -- what the machine asks for -------------------------------------------------

@dataclass(frozen=True)
class BuildImage:
    pass


@dataclass(frozen=True)
class StartSlot:
    slot: str
    image_id: str


@dataclass(frozen=True)
class RunPreview:
    slot: str


@dataclass(frozen=True)
class SwitchTraffic:
    slot: str


@dataclass(frozen=True)
class KeepWarm:
    """The slot that stopped serving stays up for `scale_down_delay`, so rollback is a switch."""
    slot: str


@dataclass(frozen=True)
class TearDown:
    slot: str


Action = BuildImage | StartSlot | RunPreview | SwitchTraffic | KeepWarm | TearDown
