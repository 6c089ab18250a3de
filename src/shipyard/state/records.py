"""What the daemon remembers about each service between restarts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class SlotState:
    IDLE = "idle"          # nothing running
    STARTING = "starting"  # a rollout is bringing it up
    LIVE = "live"          # receives the traffic
    WARM = "warm"          # stopped serving, kept up until retire_at so rollback is a switch
    CANARY = "canary"      # takes `weight` percent of users beside the live slot


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
