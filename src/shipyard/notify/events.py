"""Which of the daemon's events a webhook hears about, under which name.

The daemon's own event kinds are about mechanics (a table push, a phase change); users
subscribe to moments of a rollout. This is the one mapping between the two."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard.rollout.records import Event

SAME_NAME = frozenset({"rollout.succeeded", "rollout.failed", "rollout.aborted", "drift.found", "drift.cleared"})
PHASES = {"paused": "rollout.paused", "awaiting_promotion": "rollout.paused", "promoting": "rollout.promoted"}
CANDIDATES = SAME_NAME | {"rollout.created", "rollout.phase", "canary.weight", "traffic.switched"}
"""Event kinds that may become a notification: a cheap first filter on the rollout path."""


@dataclass(frozen=True)
class Notification:
    event: str
    service: str
    rollout_id: str | None
    phase: str | None
    message: str
    ts: float
    event_id: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutFacts:
    strategy: str
    phase: str


def classify(event: Event, rollout: Callable[[str], RolloutFacts | None]) -> Notification | None:
    """The notification an event stands for, if any. `rollout` looks a rollout up by id."""
    name = _name(event, rollout)
    if name is None:
        return None
    phase = event.data.get("phase")
    if phase is None and event.rollout_id:
        facts = rollout(event.rollout_id)
        phase = facts.phase if facts else None
    return Notification(name, event.service, event.rollout_id, phase, event.message, event.ts, event.id,
                        dict(event.data))


def _name(event: Event, rollout: Callable[[str], RolloutFacts | None]) -> str | None:
    kind = event.kind
    if kind in SAME_NAME:
        return kind
    if event.rollout_id is None:
        return None
    if kind == "rollout.created":
        return "rollout.started"
    if kind == "canary.weight":
        return "rollout.step"
    if kind == "rollout.phase":
        return PHASES.get(str(event.data.get("phase")))
    if kind == "traffic.switched":   # a canary's promotion is its move to the promoting phase
        facts = rollout(event.rollout_id)
        return "rollout.promoted" if facts is not None and facts.strategy != "canary" else None
    return None
