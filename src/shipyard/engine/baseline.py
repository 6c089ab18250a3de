"""The canary's baseline slot (strategy.canary.baseline): fresh instances of the stable
release, started with the canary and scaled with it, so the judge compares two tracks of
the same age and per-instance load (an A/A comparison against the long-running stable
track is unfair: warm caches, older processes, more users per instance).

It runs the stable release's own spec (its command and env), not the canary's."""

from __future__ import annotations

from typing import Protocol

from shipyard.engine.deps import Deps
from shipyard.engine.stored_spec import spec_from_doc
from shipyard.rollout.records import BASELINE_SLOT, ServiceRecord, Slot, SlotState
from shipyard.spec import Spec


class SlotOps(Protocol):
    """What of engine/actions.SlotOps the baseline needs (a Protocol: actions imports this module)."""

    d: Deps

    async def start_slot(self, spec: Spec, slot: str, image_id: str, rollout_id: str | None,
                         count: int | None = None) -> str | None: ...
    async def scale(self, spec: Spec, slot: str, image_id: str, want: int | None,
                    rollout_id: str | None) -> str | None: ...


def stable_spec(ops: SlotOps, spec: Spec) -> Spec:
    """The spec of the release serving now (the canary's spec when none is recorded)."""
    svc = ops.d.store.get_service(spec.service)
    live = svc.live if svc is not None else None
    return spec_from_doc(live.spec, svc.spec_path) if svc is not None and live and live.spec else spec


async def start(ops: SlotOps, spec: Spec, image_id: str, count: int, rollout_id: str | None) -> str | None:
    """`count` healthy baseline instances of the stable image; None when done, else why not."""
    why = await ops.start_slot(stable_spec(ops, spec), BASELINE_SLOT, image_id, rollout_id, count)
    return None if why is None else f"baseline: {why}"


async def scale(ops: SlotOps, spec: Spec, count: int, rollout_id: str | None) -> str | None:
    """As many baseline instances as the canary has; None when done, else why not."""
    svc = ops.d.store.get_service(spec.service)
    s = svc.slots.get(BASELINE_SLOT) if svc is not None else None
    if s is None or s.image_id is None or s.spec is None:
        return "baseline: the slot holds no release (it was torn down); the rollout cannot judge fairly"
    why = await ops.scale(spec_from_doc(s.spec, svc.spec_path if svc else ""), BASELINE_SLOT, s.image_id, count,
                          rollout_id)
    return None if why is None else f"baseline: {why}"


def take_users(svc: ServiceRecord, count: int) -> None:
    """Mark the baseline as taking users beside the canary (the table gives it the canary's share)."""
    s = svc.slots.get(BASELINE_SLOT)
    if s is not None and s.image_id is not None:
        svc.slots[BASELINE_SLOT] = Slot(SlotState.BASELINE, s.image_id, s.spec, None, 0.0, count)


def withdraw(svc: ServiceRecord) -> None:
    """No more users for the baseline (its instances keep running until the teardown)."""
    s = svc.slots.get(BASELINE_SLOT)
    if s is not None and s.state == SlotState.BASELINE:
        svc.slots[BASELINE_SLOT] = Slot(SlotState.STARTING, s.image_id, s.spec, None)
