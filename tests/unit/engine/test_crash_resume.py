"""A daemon may die between any two persisted steps of a rollout. For every step k of a
rollout (every put_rollout the run makes), a run is "crashed" right after step k is
stored: its controller stops, only the store, the live instances and the router's table
survive. A new controller on the same store must bring the rollout to the very end state
the uncrashed run reached."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Rollout
from support.fake_world import BLUE_GREEN, CANARY, World, write_spec
from support.fakes import run

Step = Callable[[Controller, Path], Awaitable[Any]]


class Crash(BaseException):
    """Not an Exception: nothing in the engine may catch it and carry on; its task just dies."""


def deploy(image: str) -> Step:
    async def step(c: Controller, spec: Path) -> None:
        await c.deploy(str(spec), image_id=image)
    step.__name__ = f"deploy {image}"
    return step


async def rollback(c: Controller, spec: Path) -> None:
    await c.rollback("shop")


def bad_preview(w: World) -> None:
    w.runtime.answers("v2", "/products", 500)


def never_healthy(w: World) -> None:
    w.runtime.never_healthy("v2")


def first_never_healthy(w: World) -> None:
    w.runtime.never_healthy("v1")


def failing_canary(w: World) -> None:
    w.router.traffic(release="v2", error_rate=0.5)


def as_is(w: World) -> None:
    pass


CANARY_BASELINE = CANARY.replace("  canary:\n", "  canary:\n    baseline: true\n", 1)
assert CANARY_BASELINE != CANARY

SCENARIOS: dict[str, tuple[str, int, Callable[[World], None], list[Step], str]] = {
    "blue-green first release": (BLUE_GREEN, 2, as_is, [deploy("v1")], "succeeded"),
    "blue-green second release": (BLUE_GREEN, 2, as_is, [deploy("v1"), deploy("v2")], "succeeded"),
    "rollback to the warm slot": (BLUE_GREEN, 2, as_is, [deploy("v1"), deploy("v2"), rollback], "succeeded"),
    "blue-green failing its preview": (BLUE_GREEN, 2, bad_preview, [deploy("v1"), deploy("v2")], "failed"),
    "blue-green never healthy": (BLUE_GREEN, 2, never_healthy, [deploy("v1"), deploy("v2")], "failed"),
    "blue-green first release never healthy": (BLUE_GREEN, 2, first_never_healthy, [deploy("v1")], "failed"),
    "canary first release never healthy": (CANARY, 4, first_never_healthy, [deploy("v1")], "failed"),
    "canary walking its steps": (CANARY, 4, as_is, [deploy("v1"), deploy("v2")], "succeeded"),
    "canary failing its analysis": (CANARY, 4, failing_canary, [deploy("v1"), deploy("v2")], "failed"),
    "canary with a baseline walking its steps": (CANARY_BASELINE, 4, as_is, [deploy("v1"), deploy("v2")],
                                                 "succeeded"),
    "canary with a baseline failing its analysis": (CANARY_BASELINE, 4, failing_canary,
                                                    [deploy("v1"), deploy("v2")], "failed"),
}


async def settle(world: World, c: Controller) -> None:
    """Until no rollout is active (and the driver tasks are done), in virtual time."""
    for _ in range(3600):
        if not world.store.active_rollouts() and not c._drivers:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"rollouts still active after an hour: {world.store.active_rollouts()}")


def play(tmp: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, crash_at: int | None) -> tuple[World, int]:
    """Run the scenario; crash after the `crash_at`-th put_rollout of its last step, then resume.
    Returns the world at the end and how many put_rollout calls the last step made."""
    strategy, replicas, setup, steps, _ = SCENARIOS[scenario]
    world = World(tmp)
    setup(world)
    world.forbid_io(monkeypatch)
    spec = write_spec(tmp, strategy, replicas)
    counted = 0

    async def main() -> int:
        nonlocal counted
        c = world.controller()
        await c.start()
        for step in steps[:-1]:
            await step(c, spec)
            await settle(world, c)
        crashed = asyncio.Event()

        def count(r: Rollout) -> None:
            nonlocal counted
            counted += 1
            if counted == crash_at:
                crashed.set()
                raise Crash(f"crash after put_rollout {counted} ({r.phase})")

        world.store.on_put_rollout = count
        try:
            await steps[-1](c, spec)
        except Crash:
            pass
        if crash_at is None:
            await settle(world, c)
            await c.close()
            return counted
        for _ in range(3600):
            if crashed.is_set():
                break
            await asyncio.sleep(0.5)
        assert crashed.is_set(), f"the run made fewer than {crash_at} put_rollout calls"
        await c.close()                      # the daemon is gone; its instances and router stay
        world.store.on_put_rollout = lambda r: None
        world.store = world.store.reopen()
        again = world.controller()
        await again.start()
        await settle(world, again)
        await again.close()
        return counted

    run(main(), world.clock)
    assert world.io_attempts == []
    return world, counted


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_crash_after_any_persisted_step_resumes_to_the_same_end_state(
        scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, steps = play(tmp_path / "ref", monkeypatch, scenario, None)
    want = reference.end_state()
    assert steps >= 2 and want["phase"] == SCENARIOS[scenario][-1], (steps, want)
    if len(SCENARIOS[scenario][3]) == 1 and want["phase"] != "succeeded":    # a first release that never served
        assert (want["live_slot"], want["router_listens"], want["table"], want["instances"],
                want["store_instances"]) == ("(unregistered)", False, None, [], []), want
    different = {}
    for k in range(1, steps + 1):
        world, _ = play(tmp_path / f"k{k}", monkeypatch, scenario, k)
        got = world.end_state()
        if got != want:
            different[k] = {key: (got[key], want[key]) for key in want if got[key] != want[key]}
    assert not different, f"{scenario}: after a crash at step k, (got, wanted): {different}"
