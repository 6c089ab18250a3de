"""The blue-green strategy as a pure state machine.

Given a rollout's persisted state and one observation it returns the next state and the
actions to carry out. The controller does the I/O; this module only decides, so every
path (including resume after a crash, which re-issues `entry_actions`) is unit-tested
without processes."""

from __future__ import annotations

from dataclasses import replace

from shipyard.rollout.model import (
    AbortRequested,
    Action,
    BuildFailed,
    BuildImage,
    Built,
    KeepWarm,
    Migrated,
    MigrateDatabase,
    MigrationFailed,
    Observation,
    Phase,
    PreviewFailed,
    PreviewPassed,
    PromoteRequested,
    Rollout,
    RunPreview,
    SlotFailed,
    SlotHealthy,
    StartSlot,
    Switched,
    SwitchFailed,
    SwitchTraffic,
    TearDown,
)


def entry_actions(r: Rollout) -> list[Action]:
    """What must be (re)done while the rollout is in its phase. Each action is
    idempotent, so a resumed rollout simply issues these again."""
    match r.phase:
        case Phase.BUILDING:
            return [BuildImage()]
        case Phase.MIGRATING:
            assert r.image_id is not None
            return [MigrateDatabase(r.image_id)]
        case Phase.STARTING:
            assert r.image_id is not None
            return [StartSlot(r.target_slot, r.image_id)]
        case Phase.PREVIEWING:
            return [RunPreview(r.target_slot)]
        case Phase.SWITCHING:
            return [SwitchTraffic(r.target_slot)]
        case _:
            return []


def step(r: Rollout, obs: Observation, now: float) -> tuple[Rollout, list[Action]]:
    """Advance `r` by one observation. Observations that do not apply to the current
    phase leave it unchanged (late or duplicate reports are harmless)."""
    if r.phase.terminal:
        return r, []

    if isinstance(obs, AbortRequested):
        if r.phase is Phase.SWITCHING:
            return r, []          # the swap is atomic and nearly done; rollback comes after
        return _fail(r, Phase.ABORTED, obs.reason, now)

    match r.phase, obs:
        case Phase.BUILDING, Built(image_id=image, live_image_id=live, spec_changes=changes):
            if image == live and not changes:
                done = replace(r, image_id=image).enter(Phase.SUCCEEDED, now,
                                                        f"image {image[:12]} is already serving; nothing to do")
                return done, []
            return _go(replace(r, image_id=image), Phase.MIGRATING if r.migrate else Phase.STARTING, now)
        case Phase.BUILDING, BuildFailed(reason=reason):
            return r.enter(Phase.FAILED, now, reason), []
        case Phase.MIGRATING, Migrated():
            return _go(r, Phase.STARTING, now)
        case Phase.MIGRATING, MigrationFailed(reason=reason):
            return r.enter(Phase.FAILED, now, reason), []

        case Phase.STARTING, SlotHealthy(slot=slot) if slot == r.target_slot:
            return _go(r, Phase.PREVIEWING, now)
        case Phase.STARTING | Phase.PREVIEWING | Phase.AWAITING_PROMOTION, SlotFailed(slot=slot, reason=reason) \
                if slot == r.target_slot:
            return _fail(r, Phase.FAILED, reason, now)

        case Phase.PREVIEWING, PreviewPassed():
            if r.auto_promote:
                return _go(r, Phase.SWITCHING, now)
            return r.enter(Phase.AWAITING_PROMOTION, now), []
        case Phase.PREVIEWING, PreviewFailed(reason=reason):
            return _fail(r, Phase.FAILED, reason, now)

        case Phase.AWAITING_PROMOTION, PromoteRequested():
            return _go(r, Phase.SWITCHING, now)

        case Phase.SWITCHING, Switched(slot=slot) if slot == r.target_slot:
            done = r.enter(Phase.SUCCEEDED, now, "")
            keep = [KeepWarm(r.previous_slot)] if r.previous_slot and r.previous_slot != slot else []
            return done, keep
        case Phase.SWITCHING, SwitchFailed(reason=reason):
            return _fail(r, Phase.FAILED, reason, now)

    return r, []


def _go(r: Rollout, phase: Phase, now: float) -> tuple[Rollout, list[Action]]:
    nxt = r.enter(phase, now)
    return nxt, entry_actions(nxt)


def _fail(r: Rollout, phase: Phase, reason: str, now: float) -> tuple[Rollout, list[Action]]:
    """End without moving traffic. The new slot is torn down only if this rollout
    started it (a switch back to a warm slot never started anything)."""
    started = r.owns_target and r.phase not in (Phase.BUILDING, Phase.MIGRATING)
    return r.enter(phase, now, reason), ([TearDown(r.target_slot)] if started else [])
