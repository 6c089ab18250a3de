"""The blue-green state machine, path by path (no I/O)."""

from __future__ import annotations

import pytest

from shipyard.rollout import bluegreen
from shipyard.rollout.model import (
    AbortRequested,
    BuildFailed,
    BuildImage,
    Built,
    KeepWarm,
    Kind,
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


def new(auto_promote: bool = True, previous: str | None = "blue") -> Rollout:
    return Rollout(id="shop-1", service="shop", kind=Kind.DEPLOY, phase=Phase.BUILDING, target_slot="green",
                   previous_slot=previous, image_id=None, previous_image_id="old" if previous else None,
                   auto_promote=auto_promote)


def test_happy_path_with_auto_promote() -> None:
    r = new()
    assert bluegreen.entry_actions(r) == [BuildImage()]
    r, acts = bluegreen.step(r, Built("img", "old"), 1.0)
    assert (r.phase, r.image_id, acts) == (Phase.STARTING, "img", [StartSlot("green", "img")])
    r, acts = bluegreen.step(r, SlotHealthy("green"), 2.0)
    assert (r.phase, acts) == (Phase.PREVIEWING, [RunPreview("green")])
    r, acts = bluegreen.step(r, PreviewPassed(), 3.0)
    assert (r.phase, acts) == (Phase.SWITCHING, [SwitchTraffic("green")])
    r, acts = bluegreen.step(r, Switched("green"), 3.5)
    assert (r.phase, acts) == (Phase.SUCCEEDED, [KeepWarm("blue")])
    assert r.timings["starting"] == pytest.approx(1.0)
    assert r.timings["switching"] == pytest.approx(0.5)


def test_first_deploy_keeps_nothing_warm() -> None:
    r = new(previous=None)
    for obs in (Built("img", None), SlotHealthy("green"), PreviewPassed()):
        r, _ = bluegreen.step(r, obs, 0)
    r, acts = bluegreen.step(r, Switched("green"), 0)
    assert r.phase is Phase.SUCCEEDED and acts == []


def test_same_image_is_a_noop_success() -> None:
    r, acts = bluegreen.step(new(), Built("old", "old"), 1.0)
    assert r.phase is Phase.SUCCEEDED and acts == [] and "already serving" in r.reason


def test_build_failure_ends_without_teardown() -> None:
    r, acts = bluegreen.step(new(), BuildFailed("step 1 exited 2"), 1.0)
    assert r.phase is Phase.FAILED and acts == [] and r.reason == "step 1 exited 2"


def test_unhealthy_slot_is_torn_down_and_traffic_never_moves() -> None:
    r, _ = bluegreen.step(new(), Built("img", "old"), 0)
    r, acts = bluegreen.step(r, SlotFailed("green", "never healthy"), 1)
    assert r.phase is Phase.FAILED and acts == [TearDown("green")]
    assert not any(isinstance(a, SwitchTraffic) for a in acts)


def test_failed_preview_is_torn_down() -> None:
    r = new()
    for obs in (Built("img", "old"), SlotHealthy("green")):
        r, _ = bluegreen.step(r, obs, 0)
    r, acts = bluegreen.step(r, PreviewFailed("GET / answered 500"), 0)
    assert r.phase is Phase.FAILED and acts == [TearDown("green")] and "500" in r.reason


def test_manual_promotion_waits_for_promote() -> None:
    r = new(auto_promote=False)
    for obs in (Built("img", "old"), SlotHealthy("green")):
        r, _ = bluegreen.step(r, obs, 0)
    r, acts = bluegreen.step(r, PreviewPassed(), 0)
    assert r.phase is Phase.AWAITING_PROMOTION and acts == []
    assert bluegreen.entry_actions(r) == []
    r, acts = bluegreen.step(r, PromoteRequested(), 0)
    assert r.phase is Phase.SWITCHING and acts == [SwitchTraffic("green")]


@pytest.mark.parametrize("phase", [Phase.BUILDING, Phase.STARTING, Phase.PREVIEWING, Phase.AWAITING_PROMOTION])
def test_abort_before_switch(phase: Phase) -> None:
    r = Rollout(**{**new().__dict__, "phase": phase, "image_id": "img"})
    r2, acts = bluegreen.step(r, AbortRequested("user"), 0)
    assert r2.phase is Phase.ABORTED
    assert acts == ([] if phase is Phase.BUILDING else [TearDown("green")])


def test_abort_during_switch_is_ignored() -> None:
    r = Rollout(**{**new().__dict__, "phase": Phase.SWITCHING, "image_id": "img"})
    r2, acts = bluegreen.step(r, AbortRequested(), 0)
    assert r2 is r and acts == []


def test_switch_failure_tears_down_only_what_it_started() -> None:
    r = Rollout(**{**new().__dict__, "phase": Phase.SWITCHING, "image_id": "img"})
    r2, acts = bluegreen.step(r, SwitchFailed("router gone"), 0)
    assert r2.phase is Phase.FAILED and acts == [TearDown("green")]
    warm = Rollout(**{**r.__dict__, "kind": Kind.ROLLBACK, "owns_target": False})
    r3, acts = bluegreen.step(warm, SwitchFailed("router gone"), 0)
    assert r3.phase is Phase.FAILED and acts == []


@pytest.mark.parametrize("obs", [PromoteRequested(), Switched("green"), SlotHealthy("blue"), PreviewPassed()])
def test_observations_out_of_phase_change_nothing(obs: object) -> None:
    r, _ = bluegreen.step(new(), Built("img", "old"), 0)    # STARTING
    r2, acts = bluegreen.step(r, obs, 5)                     # type: ignore[arg-type]
    assert r2 is r and acts == []


def test_terminal_rollouts_do_not_move() -> None:
    r, _ = bluegreen.step(new(), BuildFailed("x"), 0)
    for obs in (AbortRequested(), PromoteRequested(), Built("a", None)):
        assert bluegreen.step(r, obs, 1) == (r, [])


@pytest.mark.parametrize("phase,expected", [
    (Phase.BUILDING, [BuildImage()]),
    (Phase.STARTING, [StartSlot("green", "img")]),
    (Phase.PREVIEWING, [RunPreview("green")]),
    (Phase.AWAITING_PROMOTION, []),
    (Phase.SWITCHING, [SwitchTraffic("green")]),
    (Phase.SUCCEEDED, []),
])
def test_resume_reissues_the_phase_actions(phase: Phase, expected: list[object]) -> None:
    r = Rollout(**{**new().__dict__, "phase": phase, "image_id": "img"})
    assert bluegreen.entry_actions(r) == expected


def test_rollout_round_trips_through_dict() -> None:
    r, _ = bluegreen.step(new(), Built("img", "old"), 3.0)
    assert Rollout.from_dict(r.to_dict()) == r
