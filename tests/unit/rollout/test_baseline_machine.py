"""The canary machine with a baseline: its actions start, scale and tear the baseline down
beside the canary, and a restart re-issues them (the actions are data)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from shipyard.rollout import canary
from shipyard.rollout.model import (
    AbortRequested,
    Built,
    CanaryWithdrawn,
    Kind,
    Phase,
    Rollout,
    SetCanaryWeight,
    SlotFailed,
    SlotHealthy,
    StartSlot,
    Switched,
    TearDown,
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
    baseline: true
    steps:
      - set_weight: 25
      - set_weight: 75
"""


def spec() -> Spec:
    return parse_spec(SPEC, "shop.yaml", Path("/tmp"))


def new(previous: str | None = "blue") -> Rollout:
    return Rollout(id="shop-2", service="shop", kind=Kind.DEPLOY, phase=Phase.BUILDING, target_slot="green",
                   previous_slot=previous, image_id=None, previous_image_id="old" if previous else None,
                   strategy="canary")


def test_the_baseline_starts_with_the_canary_scales_with_it_and_goes_after_promotion() -> None:
    s = spec()
    r, acts = canary.step(new(), s, Built("img", "old"), 0)
    assert acts == [StartSlot("green", "img", 1, baseline_image="old")]
    assert canary.entry_actions(r, s) == acts                      # a restart starts both again
    r, acts = canary.step(r, s, SlotHealthy("green"), 1)
    assert acts == [SetCanaryWeight("green", 25, 1, baseline=True)]
    assert canary.entry_actions(r, s) == acts
    r, acts = canary.step(r, s, WeightSet(25), 2)
    assert acts == [SetCanaryWeight("green", 75, 3)]    # above 50 % the baseline takes no users: not scaled
    r, acts = canary.step(r, s, WeightSet(75), 3)
    assert (r.phase, acts) == (Phase.PROMOTING, [SetCanaryWeight("green", 100.0, 4)])
    r, acts = canary.step(r, s, WeightSet(100), 4)
    r, acts = canary.step(r, s, Switched("green"), 5)
    assert (r.phase, acts) == (Phase.SUCCEEDED, [TearDown("blue"), TearDown("baseline")])


def test_an_abort_withdraws_then_tears_down_canary_and_baseline() -> None:
    s = spec()
    r, _ = canary.step(new(), s, Built("img", "old"), 0)
    r, _ = canary.step(r, s, SlotHealthy("green"), 1)
    r, acts = canary.step(r, s, AbortRequested(), 2)
    assert (r.phase, acts) == (Phase.WITHDRAWING, [WithdrawCanary("green")])
    r, acts = canary.step(r, s, CanaryWithdrawn("green"), 3)
    assert (r.phase, acts) == (Phase.ABORTED, [TearDown("green"), TearDown("baseline")])


def test_a_failed_start_tears_both_down_and_a_first_release_has_no_baseline() -> None:
    s = spec()
    r, _ = canary.step(new(), s, Built("img", "old"), 0)
    r, acts = canary.step(r, s, SlotFailed("green", "baseline: slot baseline did not become healthy"), 1)
    assert (r.phase, acts) == (Phase.FAILED, [TearDown("green"), TearDown("baseline")])
    first, acts = canary.step(new(previous=None), s, Built("img", None), 0)
    assert acts == [StartSlot("green", "img", 1)]
    assert not canary.has_baseline(replace(first, previous_image_id="x", previous_slot=None), s)
