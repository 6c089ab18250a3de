"""The rollout as data: what is persisted, what the machine observes and what it asks for.

Kept free of I/O so a rollout can be stored as a row, resumed after a crash, and
unit-tested exhaustively."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    BUILDING = "building"
    MIGRATING = "migrating"            # database: lint, rehearsal on a scratch copy, expand migrations
    STARTING = "starting"              # new slot's instances starting, waiting to be healthy
    PREVIEWING = "previewing"          # preview checks through the preview route
    AWAITING_PROMOTION = "awaiting_promotion"
    SWITCHING = "switching"            # table swap in flight
    PROGRESSING = "progressing"        # canary: carrying out its current step
    ANALYZING = "analyzing"            # canary: inline analysis step running
    PAUSED = "paused"                  # canary: holding its weight (timed, until promote, or by a human)
    PROMOTING = "promoting"            # canary: scaling to full and taking all traffic
    WITHDRAWING = "withdrawing"        # canary: every user back on stable, then it ends as `ending` says
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
    strategy: str = "blue_green"       # or "canary"
    step_index: int = 0                # canary: the step being carried out
    weight: float = 0.0                # canary: percent of users on the canary now
    hold: str = ""                     # canary, while paused: "timer" | "promote" | "user" | "inconclusive"
    paused_reason: str = ""            # canary: why it holds, in words
    resume_at: float | None = None     # canary: end of a timed pause or of an analysis step
    migrate: bool = False              # the spec has a database: expand migrations run before traffic moves
    allow_unsafe: str = ""             # why unsafe migrations may run anyway (`deploy --allow-unsafe`), audited
    ending: str = ""                   # canary, while withdrawing: the phase it ends in (failed | aborted)

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
    spec_changes: tuple[str, ...] = ()
    """What differs from the live release outside the image (as `plan` reports it, e.g. a
    changed run.secret_env): with the same image, a deploy is a no-op only if this is empty."""


@dataclass(frozen=True)
class BuildFailed:
    reason: str


@dataclass(frozen=True)
class Migrated:
    summary: str


@dataclass(frozen=True)
class MigrationFailed:
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


@dataclass(frozen=True)
class WeightSet:
    weight: float


@dataclass(frozen=True)
class CanaryWithdrawn:
    slot: str
    error: str = ""                    # why the router did not take the table ("" when it did)


@dataclass(frozen=True)
class Tick:
    """Time passed (the controller reports it when a timer it was asked for fires)."""
    now: float


@dataclass(frozen=True)
class AnalysisVerdict:
    status: str                        # successful | failed | inconclusive
    summary: str
    background: bool = False           # from the whole-rollout monitor rather than an analysis step


@dataclass(frozen=True)
class PauseRequested:
    reason: str = "paused by user"


@dataclass(frozen=True)
class ResumeRequested:
    pass


@dataclass(frozen=True)
class FullPromoteRequested:
    pass


Observation = (Built | BuildFailed | Migrated | MigrationFailed | SlotHealthy | SlotFailed | PreviewPassed | PreviewFailed
               | PromoteRequested | AbortRequested | Switched | SwitchFailed | WeightSet | CanaryWithdrawn | Tick
               | AnalysisVerdict | PauseRequested | ResumeRequested | FullPromoteRequested)


# -- what the machine asks for -------------------------------------------------

@dataclass(frozen=True)
class BuildImage:
    pass


@dataclass(frozen=True)
class MigrateDatabase:
    """Lint and rehearse the pending migrations, then apply the expand ones (contract ones wait)."""
    image_id: str


@dataclass(frozen=True)
class StartSlot:
    slot: str
    image_id: str
    instances: int | None = None       # None: the spec's replicas
    baseline_image: str | None = None
    """Canary with a baseline: start as many instances of this (stable) image in the baseline
    slot beside it, healthy together."""


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


@dataclass(frozen=True)
class Unregister:
    """No release of the service ever served and its first rollout ended without one: remove
    the service record and stop its router (history and events stay), so nothing half-done
    holds the port and the next deploy starts from scratch."""


@dataclass(frozen=True)
class SetCanaryWeight:
    """Scale the canary to `instances` (waiting for them to be healthy), then route `weight` percent of users to it."""
    slot: str
    weight: float
    instances: int
    baseline: bool = False             # scale the baseline slot to `instances` too, same table swap


@dataclass(frozen=True)
class WithdrawCanary:
    """Take every user off the canary slot in one table swap (its weight to 0), reporting
    CanaryWithdrawn: done before the rollout is stored as ended, so no request reaches the
    canary once anyone can read that it ended."""
    slot: str


@dataclass(frozen=True)
class WaitUntil:
    """Report a Tick once the clock reaches `at` (timed pause, end of an analysis step)."""
    at: float


@dataclass(frozen=True)
class RunAnalysis:
    """Judge the canary until `until`, reporting an AnalysisVerdict (failed ends it early)."""
    slot: str
    until: float


Action = (BuildImage | MigrateDatabase | StartSlot | RunPreview | SwitchTraffic | KeepWarm | TearDown | SetCanaryWeight
          | WithdrawCanary | WaitUntil | RunAnalysis | Unregister)
