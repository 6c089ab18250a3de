"""The canary strategy as a pure state machine.

The canary takes users step by step (`set_weight`), holds (`pause`), and is judged
(`analysis`); a failed verdict at any time takes every user back to stable in one table
swap. After the last step it becomes the stable release and the old instances drain.
Like bluegreen.py: no I/O, `entry_actions` re-issues a phase's work after a restart."""

from __future__ import annotations

from dataclasses import replace

from shipyard.rollout.model import (
    AbortRequested,
    Action,
    AnalysisVerdict,
    BuildFailed,
    BuildImage,
    Built,
    CanaryWithdrawn,
    FullPromoteRequested,
    Migrated,
    MigrateDatabase,
    MigrationFailed,
    Observation,
    PauseRequested,
    Phase,
    PromoteRequested,
    ResumeRequested,
    Rollout,
    RunAnalysis,
    SetCanaryWeight,
    SlotFailed,
    SlotHealthy,
    StartSlot,
    Switched,
    SwitchFailed,
    SwitchTraffic,
    TearDown,
    Tick,
    WaitUntil,
    WeightSet,
    WithdrawCanary,
)
from shipyard.spec import Spec
from shipyard.spec.strategy import AnalysisStep, CanarySpec, PauseStep, SetWeightStep

JUDGED = (Phase.PROGRESSING, Phase.ANALYZING, Phase.PAUSED)
"""Phases in which the canary takes users, so the background analysis watches it."""


def _canary(spec: Spec) -> CanarySpec:
    assert spec.strategy.canary is not None, "canary machine driven with a non-canary spec"
    return spec.strategy.canary


def first_instances(spec: Spec) -> int:
    """Canary instances to start with: enough for the first weight it will take."""
    c = _canary(spec)
    first = next((s.set_weight for s in c.steps if isinstance(s, SetWeightStep) and s.set_weight > 0), 0.0)
    return c.canary_instances(first, spec.instance_count)


def entry_actions(r: Rollout, spec: Spec) -> list[Action]:
    c = _canary(spec)
    match r.phase:
        case Phase.BUILDING:
            return [BuildImage()]
        case Phase.MIGRATING:
            assert r.image_id is not None
            return [MigrateDatabase(r.image_id)]
        case Phase.STARTING:
            assert r.image_id is not None
            return [StartSlot(r.target_slot, r.image_id, first_instances(spec))]
        case Phase.PROGRESSING:
            step = c.steps[r.step_index]
            assert isinstance(step, SetWeightStep)
            return [SetCanaryWeight(r.target_slot, step.set_weight, c.canary_instances(step.set_weight, spec.instance_count))]
        case Phase.PAUSED:
            return [WaitUntil(r.resume_at)] if r.hold == "timer" and r.resume_at is not None else []
        case Phase.ANALYZING:
            assert r.resume_at is not None
            return [RunAnalysis(r.target_slot, r.resume_at)]
        case Phase.PROMOTING:
            return [SetCanaryWeight(r.target_slot, 100.0, spec.instance_count)]
        case Phase.SWITCHING:
            return [SwitchTraffic(r.target_slot)]
        case Phase.WITHDRAWING:
            return [WithdrawCanary(r.target_slot)]
    return []


def step(r: Rollout, spec: Spec, obs: Observation, now: float) -> tuple[Rollout, list[Action]]:
    """Advance by one observation; observations that do not apply leave `r` unchanged."""
    if r.phase.terminal:
        return r, []
    if r.phase is Phase.WITHDRAWING:        # ending already: only the withdrawal's outcome moves it
        if isinstance(obs, CanaryWithdrawn) and obs.slot == r.target_slot:
            why = f"{r.reason} (taking users off the canary failed: {obs.error})" if obs.error else r.reason
            ended = r.enter(Phase(r.ending or Phase.FAILED), now, why)
            return replace(ended, ending=""), [TearDown(r.target_slot)]
        return r, []
    match obs:
        case AbortRequested(reason=reason) if r.phase is not Phase.SWITCHING:
            return _end(r, Phase.ABORTED, reason, now)
        case AnalysisVerdict(status="failed", summary=summary) if r.phase in JUDGED:
            return _end(r, Phase.FAILED, f"analysis failed: {summary}", now)
        case FullPromoteRequested() if r.phase in JUDGED:
            return _go(r.enter(Phase.PROMOTING, now), spec)
        case PauseRequested(reason=reason) if r.phase in (Phase.PROGRESSING, Phase.ANALYZING) or (
                r.phase is Phase.PAUSED and r.hold == "timer"):
            return _hold(r, "user", f"{reason}; `shipyard resume` to continue", None, now), []

    match r.phase, obs:
        case Phase.BUILDING, Built(image_id=image, live_image_id=live, spec_changes=changes):
            if image == live and not changes:
                return replace(r, image_id=image).enter(
                    Phase.SUCCEEDED, now, f"image {image[:12]} is already serving; nothing to do"), []
            return _go(replace(r, image_id=image).enter(Phase.MIGRATING if r.migrate else Phase.STARTING, now), spec)
        case Phase.BUILDING, BuildFailed(reason=reason):
            return r.enter(Phase.FAILED, now, reason), []
        case Phase.MIGRATING, Migrated():
            return _go(r.enter(Phase.STARTING, now), spec)
        case Phase.MIGRATING, MigrationFailed(reason=reason):
            return r.enter(Phase.FAILED, now, reason), []

        case Phase.STARTING, SlotHealthy(slot=slot) if slot == r.target_slot:
            if r.previous_slot is None:     # a first release has no stable to compare with: it is promoted
                return _go(replace(r, reason="first release: no stable track to compare with").enter(
                    Phase.PROMOTING, now), spec)
            return enter_step(r, spec, 0, now)
        case Phase.STARTING | Phase.PROGRESSING | Phase.PROMOTING, SlotFailed(reason=reason):
            return _end(r, Phase.FAILED, reason, now)

        case Phase.PROGRESSING, WeightSet(weight=w):
            return enter_step(replace(r, weight=w), spec, r.step_index + 1, now)
        case Phase.PROGRESSING | Phase.ANALYZING, PromoteRequested():
            return enter_step(r, spec, r.step_index + 1, now)     # skip the current step

        case Phase.PAUSED, Tick(now=t) if r.hold == "timer" and r.resume_at is not None and t >= r.resume_at:
            return enter_step(r, spec, r.step_index + 1, now)
        case Phase.PAUSED, PromoteRequested():
            return enter_step(r, spec, r.step_index + 1, now)
        case Phase.PAUSED, ResumeRequested() if r.hold == "user":
            return enter_step(r, spec, r.step_index, now)         # carry out the interrupted step again

        case Phase.ANALYZING, AnalysisVerdict(status="successful"):
            return enter_step(r, spec, r.step_index + 1, now)
        case Phase.ANALYZING, AnalysisVerdict(status="inconclusive", summary=summary):
            return _hold(r, "inconclusive", f"analysis inconclusive: {summary}; `shipyard promote` to go on, "
                                            "`shipyard abort` to roll back", None, now), []

        case Phase.PROMOTING, WeightSet(weight=w) if w >= 100:
            return _go(replace(r, weight=100.0).enter(Phase.SWITCHING, now), spec)
        case Phase.SWITCHING, Switched(slot=slot) if slot == r.target_slot:
            done = r.enter(Phase.SUCCEEDED, now)
            return done, ([TearDown(r.previous_slot)] if r.previous_slot and r.previous_slot != slot else [])
        case Phase.SWITCHING, SwitchFailed(reason=reason):
            return _end(r, Phase.FAILED, reason, now)
    return r, []


def enter_step(r: Rollout, spec: Spec, index: int, now: float) -> tuple[Rollout, list[Action]]:
    """Start step `index` (past the last one: promote)."""
    steps = _canary(spec).steps
    r = replace(r, step_index=index, hold="", paused_reason="", resume_at=None)
    if index >= len(steps):
        return _go(r.enter(Phase.PROMOTING, now), spec)
    match steps[index]:
        case SetWeightStep():
            return _go(r.enter(Phase.PROGRESSING, now), spec)
        case PauseStep(pause=p) if p.duration is not None:
            held = _hold(r, "timer", f"pause step {index + 1}: holding {r.weight:g}% for {p.duration:g}s",
                         now + p.duration, now)
            return held, entry_actions(held, spec)
        case PauseStep():
            return _hold(r, "promote", f"pause step {index + 1}: holding {r.weight:g}% until `shipyard promote`",
                         None, now), []
        case AnalysisStep(analysis=a):
            return _go(replace(r, resume_at=now + a.duration).enter(Phase.ANALYZING, now), spec)
    raise AssertionError(f"unknown step {steps[index]!r}")


def _go(r: Rollout, spec: Spec) -> tuple[Rollout, list[Action]]:
    return r, entry_actions(r, spec)


def _hold(r: Rollout, hold: str, reason: str, resume_at: float | None, now: float) -> Rollout:
    paused = r.enter(Phase.PAUSED, now) if r.phase is not Phase.PAUSED else r
    return replace(paused, hold=hold, paused_reason=reason, resume_at=resume_at, updated_at=now)


def _end(r: Rollout, phase: Phase, reason: str, now: float) -> tuple[Rollout, list[Action]]:
    """Every user back on stable in one swap, then the canary stops. A canary that may take
    users is withdrawn first, in a phase of its own (a restart withdraws it again): only once
    the swap is done is the rollout stored as ended, so nobody who reads "failed" or
    "aborted" can still be sent to the canary."""
    if r.phase in (*JUDGED, Phase.PROMOTING, Phase.SWITCHING):
        withdrawing = replace(r.enter(Phase.WITHDRAWING, now, reason), ending=str(phase), weight=0.0, hold="",
                              paused_reason="", resume_at=None)
        return withdrawing, [WithdrawCanary(r.target_slot)]
    started = r.phase not in (Phase.BUILDING, Phase.MIGRATING)
    ended = replace(r.enter(phase, now, reason), weight=0.0, hold="", paused_reason="", resume_at=None)
    return ended, ([TearDown(r.target_slot)] if started else [])
