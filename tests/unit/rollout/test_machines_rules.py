"""Rules that hold for every strategy, applied once in rollout/machines.py (no I/O): a first
release that ends without serving asks to unregister its service; the same image with a
changed spec outside it (secret_env, replicas) is a rollout, not "nothing to do"."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.rollout import machines
from shipyard.rollout.model import (
    AbortRequested,
    BuildFailed,
    Built,
    Kind,
    MigrationFailed,
    Observation,
    Phase,
    PreviewFailed,
    Rollout,
    SlotFailed,
    SlotHealthy,
    StartSlot,
    SwitchFailed,
    TearDown,
    Unregister,
)
from shipyard.spec import Spec, parse_spec

HEAD = """\
service: shop
listen: 127.0.0.1:8080
run: {command: [python3, -m, shop]}
replicas: 2
"""
CANARY = "strategy: {canary: {steps: [{set_weight: 10}, {pause: 30s}]}}\n"


def spec(canary: bool = False) -> Spec:
    return parse_spec(HEAD + (CANARY if canary else ""), "shipyard.yaml", Path("."))


def rollout(previous: str | None, phase: Phase = Phase.BUILDING, strategy: str = "blue_green",
            kind: Kind = Kind.DEPLOY, migrate: bool = False) -> Rollout:
    return Rollout(id="shop-1", service="shop", kind=kind, phase=phase, target_slot="green",
                   previous_slot=previous, image_id=None if phase is Phase.BUILDING else "img",
                   previous_image_id="old" if previous else None, strategy=strategy, migrate=migrate)


# (phase the rollout is in, what ends it, the actions besides Unregister)
ENDINGS: list[tuple[Phase, Observation, list[object]]] = [
    (Phase.BUILDING, BuildFailed("build failed: exit 3"), []),
    (Phase.MIGRATING, MigrationFailed("lock"), []),
    (Phase.STARTING, SlotFailed("green", "never healthy"), [TearDown("green")]),
    (Phase.STARTING, AbortRequested("aborted by user"), [TearDown("green")]),
    (Phase.PREVIEWING, PreviewFailed("GET / answered 500"), [TearDown("green")]),
    (Phase.SWITCHING, SwitchFailed("router refused"), [TearDown("green")]),
]


@pytest.mark.parametrize(("phase", "obs", "teardown"), ENDINGS, ids=lambda x: getattr(x, "value", type(x).__name__))
def test_a_first_blue_green_release_that_ends_without_serving_unregisters_after_its_teardown(
        phase: Phase, obs: Observation, teardown: list[object]) -> None:
    r, actions = machines.step(rollout(None, phase), spec(), obs, 1.0)
    assert r.phase in (Phase.FAILED, Phase.ABORTED)
    assert actions == [*teardown, Unregister()]        # instances leave first, then the record and router


@pytest.mark.parametrize(("phase", "obs", "teardown"), ENDINGS, ids=lambda x: getattr(x, "value", type(x).__name__))
def test_a_later_release_that_fails_never_unregisters(phase: Phase, obs: Observation, teardown: list[object]) -> None:
    r, actions = machines.step(rollout("blue", phase), spec(), obs, 1.0)
    assert r.phase in (Phase.FAILED, Phase.ABORTED) and actions == teardown


def test_a_first_canary_release_that_fails_unregisters() -> None:
    r, actions = machines.step(rollout(None, Phase.STARTING, "canary"), spec(True),
                               SlotFailed("green", "exited"), 1.0)
    assert r.phase is Phase.FAILED and actions == [TearDown("green"), Unregister()]
    r, actions = machines.step(rollout("blue", Phase.STARTING, "canary"), spec(True),
                               SlotFailed("green", "exited"), 1.0)
    assert r.phase is Phase.FAILED and actions == [TearDown("green")]


def test_an_ended_rollout_asks_nothing_again() -> None:
    ended = rollout(None, Phase.FAILED)
    assert machines.step(ended, spec(), AbortRequested("again"), 2.0) == (ended, [])


def test_which_ended_rollouts_leave_nothing_behind() -> None:
    assert machines.first_release_abandoned(rollout(None, Phase.FAILED))
    assert machines.first_release_abandoned(rollout(None, Phase.ABORTED))
    assert not machines.first_release_abandoned(rollout(None, Phase.SUCCEEDED))
    assert not machines.first_release_abandoned(rollout(None, Phase.STARTING))
    assert not machines.first_release_abandoned(rollout("blue", Phase.FAILED))
    assert not machines.first_release_abandoned(rollout(None, Phase.FAILED, kind=Kind.ROLLBACK))


@pytest.mark.parametrize("canary", [False, True])
def test_the_same_image_is_nothing_to_do_only_when_the_spec_is_unchanged(canary: bool) -> None:
    strategy = "canary" if canary else "blue_green"
    r, actions = machines.step(rollout("blue", strategy=strategy), spec(canary), Built("img", "img"), 1.0)
    assert r.phase is Phase.SUCCEEDED and "nothing to do" in r.reason and actions == []
    changed = Built("img", "img", ("run.secret_env: [\"A\"] -> [\"B\"]",))
    r, actions = machines.step(rollout("blue", strategy=strategy), spec(canary), changed, 1.0)
    assert r.phase is Phase.STARTING and r.image_id == "img" and "nothing to do" not in r.reason
    assert actions[0] == StartSlot("green", "img", 1 if canary else None)


def test_a_spec_change_with_a_database_migrates_first() -> None:
    changed = Built("img", "img", ("replicas 2 -> 3",))
    r, _ = machines.step(rollout("blue", migrate=True), spec(), changed, 1.0)
    assert r.phase is Phase.MIGRATING
    r, _ = machines.step(r, spec(), SlotHealthy("green"), 2.0)       # out of phase: ignored
    assert r.phase is Phase.MIGRATING
