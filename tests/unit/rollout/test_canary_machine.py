"""The canary state machine, path by path (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.rollout import canary
from shipyard.rollout.model import (
    AbortRequested,
    AnalysisVerdict,
    BuildImage,
    Built,
    CanaryWithdrawn,
    FullPromoteRequested,
    Kind,
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
    SwitchTraffic,
    TearDown,
    Tick,
    WaitUntil,
    WeightSet,
    WithdrawCanary,
)
from shipyard.spec import Spec, parse_spec

SPEC = """\
service: shop
listen: 127.0.0.1:8080
run: {command: [python3, -m, shop]}
replicas: 4
strategy:
  canary:
    steps:
      - set_weight: 5
      - pause: 30s
      - set_weight: 25
      - analysis: {duration: 60s}
      - pause: {}
      - set_weight: 50
"""


@pytest.fixture
def spec() -> Spec:
    return parse_spec(SPEC, "shop.yaml", Path("/tmp"))


def new() -> Rollout:
    return Rollout(id="shop-2", service="shop", kind=Kind.DEPLOY, phase=Phase.BUILDING, target_slot="green",
                   previous_slot="blue", image_id=None, previous_image_id="old", strategy="canary")


def started(spec: Spec) -> Rollout:
    r, acts = canary.step(new(), spec, Built("img", "old"), 0)
    assert acts == [StartSlot("green", "img", 1)]       # 5 % of 4 replicas: one instance
    return r


def test_walks_every_step_to_full_promotion(spec: Spec) -> None:
    assert canary.entry_actions(new(), spec) == [BuildImage()]
    r = started(spec)
    r, acts = canary.step(r, spec, SlotHealthy("green"), 1)
    assert (r.phase, r.step_index, acts) == (Phase.PROGRESSING, 0, [SetCanaryWeight("green", 5, 1)])
    r, acts = canary.step(r, spec, WeightSet(5), 2)
    assert (r.phase, r.hold, r.resume_at, acts) == (Phase.PAUSED, "timer", 32, [WaitUntil(32)])
    assert canary.step(r, spec, Tick(31), 31) == (r, [])               # not yet
    r, acts = canary.step(r, spec, Tick(32), 32)
    assert (r.phase, r.step_index, acts) == (Phase.PROGRESSING, 2, [SetCanaryWeight("green", 25, 1)])
    r, acts = canary.step(r, spec, WeightSet(25), 33)
    assert (r.phase, r.weight, acts) == (Phase.ANALYZING, 25, [RunAnalysis("green", 93)])
    r, acts = canary.step(r, spec, AnalysisVerdict("successful", "all good"), 93)
    assert (r.phase, r.hold, acts) == (Phase.PAUSED, "promote", [])
    assert "shipyard promote" in r.paused_reason
    assert canary.step(r, spec, Tick(10_000), 10_000) == (r, [])       # waits for a human, not the clock
    r, acts = canary.step(r, spec, PromoteRequested(), 100)
    assert acts == [SetCanaryWeight("green", 50, 2)]                   # instances follow the weight
    r, acts = canary.step(r, spec, WeightSet(50), 101)
    assert (r.phase, acts) == (Phase.PROMOTING, [SetCanaryWeight("green", 100, 4)])
    r, acts = canary.step(r, spec, WeightSet(100), 102)
    assert (r.phase, acts) == (Phase.SWITCHING, [SwitchTraffic("green")])
    r, acts = canary.step(r, spec, Switched("green"), 103)
    assert (r.phase, r.weight, acts) == (Phase.SUCCEEDED, 100, [TearDown("blue")])


def test_failed_background_verdict_aborts_at_once_in_every_judged_phase(spec: Spec) -> None:
    r, _ = canary.step(started(spec), spec, SlotHealthy("green"), 1)
    for phase_obs in ([], [WeightSet(5)], [WeightSet(5), Tick(40), WeightSet(25)]):
        x = r
        for o in phase_obs:
            x, _ = canary.step(x, spec, o, 50)
        assert x.phase in canary.JUDGED
        ending, acts = canary.step(x, spec, AnalysisVerdict("failed", "error rate 10%", background=True), 60)
        assert ending.phase is Phase.WITHDRAWING and ending.weight == 0 and acts == [WithdrawCanary("green")]
        done, acts = canary.step(ending, spec, CanaryWithdrawn("green"), 61)   # users off it before it ends
        assert done.phase is Phase.FAILED and done.weight == 0 and acts == [TearDown("green")]
        assert "error rate 10%" in done.reason


def test_inconclusive_analysis_pauses_for_a_human(spec: Spec) -> None:
    r = started(spec)
    for t, o in enumerate((SlotHealthy("green"), WeightSet(5), Tick(100), WeightSet(25))):
        r, _ = canary.step(r, spec, o, t * 50)
    assert r.phase is Phase.ANALYZING
    r, acts = canary.step(r, spec, AnalysisVerdict("inconclusive", "12 requests, need 50"), 260)
    assert (r.phase, r.hold, acts) == (Phase.PAUSED, "inconclusive", [])
    assert "need 50" in r.paused_reason and "shipyard abort" in r.paused_reason
    r, acts = canary.step(r, spec, PromoteRequested(), 170)
    assert r.phase is Phase.PAUSED and r.hold == "promote" and r.step_index == 4


def test_manual_pause_and_resume_redo_the_interrupted_step(spec: Spec) -> None:
    r, _ = canary.step(started(spec), spec, SlotHealthy("green"), 1)     # PROGRESSING, step 0
    r, acts = canary.step(r, spec, PauseRequested(), 2)
    assert (r.phase, r.hold, acts) == (Phase.PAUSED, "user", [])
    assert canary.entry_actions(r, spec) == []
    assert canary.step(r, spec, Tick(1e9), 1e9) == (r, [])
    r, acts = canary.step(r, spec, ResumeRequested(), 3)
    assert (r.phase, r.step_index, acts) == (Phase.PROGRESSING, 0, [SetCanaryWeight("green", 5, 1)])


def test_resume_does_not_skip_a_promote_gate(spec: Spec) -> None:
    r = started(spec)
    for t, o in enumerate((SlotHealthy("green"), WeightSet(5), Tick(100), WeightSet(25),
                           AnalysisVerdict("successful", ""))):
        r, _ = canary.step(r, spec, o, t * 50)
    assert r.hold == "promote"
    assert canary.step(r, spec, ResumeRequested(), 101) == (r, [])


def test_full_promote_skips_the_remaining_steps(spec: Spec) -> None:
    r, _ = canary.step(started(spec), spec, SlotHealthy("green"), 1)
    r, acts = canary.step(r, spec, FullPromoteRequested(), 2)
    assert (r.phase, acts) == (Phase.PROMOTING, [SetCanaryWeight("green", 100, 4)])


@pytest.mark.parametrize("obs,weights", [(AbortRequested("by user"), [5]), (SlotFailed("green", "died"), [])])
def test_abort_and_failure_take_users_back(spec: Spec, obs: object, weights: list[float]) -> None:
    r, _ = canary.step(started(spec), spec, SlotHealthy("green"), 1)
    for w in weights:
        r, _ = canary.step(r, spec, WeightSet(w), 2)
    done, acts = canary.step(r, spec, obs, 3)  # type: ignore[arg-type]
    # it may take users (progressing): they go back to stable before the rollout ends
    assert done.phase is Phase.WITHDRAWING and done.weight == 0 and acts == [WithdrawCanary("green")]
    assert canary.step(done, spec, PromoteRequested(), 4) == (done, [])
    assert canary.step(done, spec, AbortRequested(), 4) == (done, [])
    done, acts = canary.step(done, spec, CanaryWithdrawn("green"), 5)
    assert done.phase in (Phase.ABORTED, Phase.FAILED) and done.weight == 0 and acts == [TearDown("green")]
    assert canary.step(done, spec, PromoteRequested(), 4) == (done, [])


def test_abort_while_switching_is_ignored(spec: Spec) -> None:
    r = Rollout(**{**started(spec).__dict__, "phase": Phase.SWITCHING})
    assert canary.step(r, spec, AbortRequested(), 5) == (r, [])


@pytest.mark.parametrize("phase,expected", [
    (Phase.PROGRESSING, [SetCanaryWeight("green", 25, 1)]),
    (Phase.ANALYZING, [RunAnalysis("green", 500)]),
    (Phase.PROMOTING, [SetCanaryWeight("green", 100, 4)]),
    (Phase.SWITCHING, [SwitchTraffic("green")]),
])
def test_resume_after_restart_reissues_the_phase_work(spec: Spec, phase: Phase, expected: list[object]) -> None:
    index = {Phase.PROGRESSING: 2, Phase.ANALYZING: 3}.get(phase, 5)
    r = Rollout(**{**started(spec).__dict__, "phase": phase, "step_index": index, "resume_at": 500.0})
    assert canary.entry_actions(r, spec) == expected
    timed = Rollout(**{**r.__dict__, "phase": Phase.PAUSED, "hold": "timer", "step_index": 1})
    assert canary.entry_actions(timed, spec) == [WaitUntil(500.0)]


def test_rollout_with_canary_fields_round_trips() -> None:
    r = Rollout(**{**new().__dict__, "phase": Phase.PAUSED, "hold": "user", "weight": 2.5, "resume_at": 9.0})
    assert Rollout.from_dict(r.to_dict()) == r


def test_a_first_release_is_promoted_directly(spec: Spec) -> None:
    first = Rollout(**{**new().__dict__, "previous_slot": None, "previous_image_id": None})
    r, acts = canary.step(first, spec, Built("img", None), 0)
    r, acts = canary.step(r, spec, SlotHealthy("green"), 1)
    assert (r.phase, acts) == (Phase.PROMOTING, [SetCanaryWeight("green", 100, 4)])
