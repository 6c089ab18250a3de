"""Issue 13: an abort (or a failed analysis) takes every user off the canary BEFORE the
rollout is stored as ended, on the fakes of every port; and a daemon that dies between the
two (after the withdrawal is recorded, after the table without the canary is pushed, after
the end is stored) resumes to the same end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Phase, Rollout
from shipyard.router.table import RoutingTable
from support.fake_world import CANARY, World, write_spec
from support.fakes import run


class Crash(BaseException):
    """Not an Exception: nothing in the engine catches it; the driver's task just dies."""


async def canary_taking_users(world: World, c: Controller, spec: Path) -> Rollout:
    """v1 live, v2 deployed as a canary and holding 10 % of the users (its pause step)."""
    assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, 3600)).phase is Phase.SUCCEEDED
    r = await c.deploy(str(spec), image_id="v2")
    for _ in range(600):
        now = world.store.get_rollout(r.id)
        if now is not None and now.phase is Phase.PAUSED:
            break
        await world.clock.sleep(0.5)
    assert world.router.tables["shop"].weights == {"green": 10.0, "blue": 90.0}
    return r


def watch_the_end(world: World) -> list[tuple[str, dict[str, float]]]:
    """(phase, the router's weights at that moment) each time a rollout state is stored."""
    seen: list[tuple[str, dict[str, float]]] = []
    world.store.on_put_rollout = lambda r: seen.append((str(r.phase), dict(world.router.tables["shop"].weights)))
    return seen


def test_an_abort_takes_users_off_the_canary_before_it_is_stored_as_aborted(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CANARY, replicas=4)

    async def body() -> None:
        c = world.controller()
        await c.start()
        try:
            r = await canary_taking_users(world, c, spec)
            seen = watch_the_end(world)
            done = await c.abort("shop")
            assert done.id == r.id and done.phase is Phase.ABORTED and done.reason == "aborted by user"
            assert seen[-2:] == [("withdrawing", {"green": 10.0, "blue": 90.0}), ("aborted", {"blue": 100.0})]
            assert world.router.tables["shop"].tracks.keys() == {"blue"}
            assert world.runtime.live("shop", "green") == []
        finally:
            await c.close()
    run(body(), world.clock)
    assert world.io_attempts == []


def test_a_failed_analysis_takes_users_off_the_canary_before_it_is_stored_as_failed(world: World,
                                                                                    tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CANARY, replicas=4)
    world.router.traffic(release="v2", error_rate=0.5)

    async def body() -> None:
        c = world.controller()
        await c.start()
        try:
            assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, 3600)).phase is Phase.SUCCEEDED
            seen = watch_the_end(world)
            r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, 3600)
            assert r.phase is Phase.FAILED and r.reason.startswith("analysis failed"), r.reason
            ended = [i for i, (phase, _w) in enumerate(seen) if phase == "failed"]
            assert len(ended) == 1 and seen[ended[0] - 1][0] == "withdrawing"
            assert seen[ended[0]][1] == {"blue": 100.0}      # when "failed" was stored, nobody was on green
        finally:
            await c.close()
    run(body(), world.clock)
    assert world.io_attempts == []


def crash_when(world: World, where: str, crashed: list[str]) -> Callable[[], None]:
    """Arrange a crash: right after the withdrawal is stored, right after the table without
    the canary is pushed (before the end is stored), or right after the end is stored."""
    if where in ("withdrawing", "aborted"):
        def crash(r: Rollout) -> None:
            if str(r.phase) == where:
                crashed.append(where)
                raise Crash(f"crash after storing {where}")
        world.store.on_put_rollout = crash
    else:
        apply = world.router.apply

        async def crashing_apply(table: RoutingTable) -> None:
            await apply(table)
            if table.weights == {"blue": 100.0} and "green" in table.tracks:
                world.router.apply = apply          # type: ignore[method-assign]
                crashed.append(where)
                raise Crash("crash after the table without the canary was pushed")
        world.router.apply = crashing_apply         # type: ignore[method-assign]

    def undo() -> None:
        world.store.on_put_rollout = lambda r: None
    return undo


@pytest.mark.parametrize("where", ["withdrawing", "pushed", "aborted"])
def test_a_daemon_dying_while_an_abort_ends_the_canary_resumes_to_the_same_end(
        world: World, tmp_path: Path, where: str) -> None:
    spec = write_spec(tmp_path, CANARY, replicas=4)
    out: dict[str, Any] = {}

    async def body() -> None:
        c = world.controller()
        await c.start()
        r = await canary_taking_users(world, c, spec)
        crashed: list[str] = []
        undo = crash_when(world, where, crashed)
        with contextlib.suppress(Crash):
            await c.abort("shop")
        for _ in range(100):
            if crashed:
                break
            await asyncio.sleep(0.1)
        assert crashed == [where]
        undo()
        stored = world.store.get_rollout(r.id)
        assert stored is not None and stored.phase is (Phase.ABORTED if where == "aborted" else Phase.WITHDRAWING)
        await c.close()                              # the daemon is gone; instances and router stay
        world.store = world.store.reopen()
        again = world.controller()
        await again.start()
        for _ in range(600):
            if not world.store.active_rollouts() and not again._drivers:
                break
            await world.clock.sleep(0.5)
        await again.close()
        out["rollout"] = world.store.get_rollout(r.id)

    run(body(), world.clock)
    got = out["rollout"]
    assert got is not None and got.phase is Phase.ABORTED and got.reason == "aborted by user", got
    end = world.end_state()
    assert end["live_slot"] == "blue" and end["table"] == {**end["table"], "weights": {"blue": 100.0}}
    assert end["table"]["tracks"] == {"blue": 4}
    assert end["instances"] == [("blue", "v1")] * 4 and world.runtime.live("shop", "green") == []
    assert world.io_attempts == []


def test_a_bug_while_withdrawing_still_ends_the_rollout_and_tears_the_canary_down(world: World,
                                                                                  tmp_path: Path) -> None:
    """The driver's last resort (an unexpected exception) on a rollout that was ending already
    finishes the withdrawal rather than leaving it withdrawing with nobody driving it."""
    spec = write_spec(tmp_path, CANARY, replicas=4)

    async def body() -> None:
        c = world.controller()
        await c.start()
        try:
            r = await canary_taking_users(world, c, spec)

            def bug(stored: Rollout) -> None:
                if stored.phase is Phase.ABORTED and stored.reason == "aborted by user":
                    world.store.on_put_rollout = lambda _r: None
                    raise RuntimeError("a bug right after the end was stored")
            world.store.on_put_rollout = bug
            await c.abort("shop")
            await c.wait(r.id, 60)
            got = world.store.get_rollout(r.id)
            assert got is not None and got.phase is Phase.ABORTED, got
            assert world.store.active_rollouts("shop") == []
            assert world.router.tables["shop"].weights == {"blue": 100.0}
            assert world.router.tables["shop"].tracks.keys() == {"blue"}
            assert world.runtime.live("shop", "green") == []
        finally:
            await c.close()
    run(body(), world.clock)
    assert world.io_attempts == []
