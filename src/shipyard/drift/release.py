"""Release drift: do the running instances match what the service record says should run?

The record is the desired state (each slot: its state and image); the instances with
their status and liveness are the actual state. Slots a rollout is changing right now
are left alone (``in_rollout``): their instances are in motion by design."""

from __future__ import annotations

import time
from collections.abc import Collection

from shipyard.drift.report import DriftFinding
from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState

LIVE_STATUSES = ("starting", "healthy", "unhealthy")
RETIRE_GRACE_SECONDS = 60.0
"""A warm slot past its retire_at is torn down by the supervisor's next tick: only after
this grace is a still-running one drift."""


def desired_replicas(slot: Slot) -> int | None:
    if slot.replicas is not None:
        return int(slot.replicas)
    value = (slot.spec or {}).get("replicas")
    return int(value) if isinstance(value, int) else None


def release_findings(svc: ServiceRecord, instances: list[tuple[Instance, str]], gone: Collection[str] = (),
                     in_rollout: bool = False, now: float | None = None,
                     retire_grace: float = RETIRE_GRACE_SECONDS) -> list[DriftFinding]:
    """``instances``: the service's records (any status); ``gone``: ids of recorded live
    instances whose process is not running (from the process scan)."""
    now = time.time() if now is None else now
    moving = {SlotState.STARTING, SlotState.CANARY, SlotState.BASELINE} if in_rollout else set()
    live = [(i, s) for i, s in instances if s in LIVE_STATUSES]
    findings: list[DriftFinding] = []

    def add(inst: Instance | None, detail: str, **evidence: object) -> None:
        findings.append(DriftFinding("release", inst.id if inst else None, svc.name, detail, [], dict(evidence)))

    for inst, status in live:
        slot = svc.slots.get(inst.slot)
        if slot is None:
            add(inst, f"instance {inst.id} runs in slot {inst.slot!r}, which the service does not have",
                change="unknown_slot", slot=inst.slot, image_id=inst.image_id)
        elif slot.state in moving:
            continue
        elif slot.state == SlotState.IDLE:
            add(inst, f"instance {inst.id} is up in slot {inst.slot}, which should be empty (idle)",
                change="slot_should_be_gone", slot=inst.slot, slot_state=slot.state, image_id=inst.image_id,
                status=status)
        elif slot.state == SlotState.WARM and slot.retire_at is not None and now > slot.retire_at + retire_grace:
            add(inst, f"instance {inst.id} is up in slot {inst.slot}, retired "
                f"{now - slot.retire_at:.0f}s ago", change="slot_should_be_gone", slot=inst.slot,
                slot_state=slot.state, retire_at=slot.retire_at, image_id=inst.image_id, status=status)
        elif slot.image_id != inst.image_id:
            add(inst, f"instance {inst.id} runs image {inst.image_id[:12]}, slot {inst.slot} holds "
                f"{(slot.image_id or 'none')[:12]}", change="wrong_image", slot=inst.slot,
                expected_image_id=slot.image_id, actual_image_id=inst.image_id)

    for name, slot in sorted(svc.slots.items()):
        if slot.state not in (SlotState.LIVE, SlotState.CANARY) or slot.state in moving:
            continue
        want = desired_replicas(slot)
        running = [i.id for i, _ in live if i.slot == name and i.image_id == slot.image_id and i.id not in gone]
        if want is not None and len(running) < want:
            add(None, f"slot {name} ({slot.state}) runs {len(running)} of {want} instances",
                change="too_few_instances", slot=name, slot_state=slot.state, desired=want,
                running=len(running), instances=running)
    if svc.active_slot is not None and svc.active_slot not in svc.slots:
        add(None, f"the active slot {svc.active_slot!r} does not exist", change="unknown_active_slot")
    return findings
