"""Whole rollouts driven by the real controller on the fakes of every port: no process,
no socket, no real waiting (virtual time), so each runs in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.rollout.model import Phase
from shipyard.state.records import SlotState
from support.fake_world import CANARY, World, write_spec
from support.fakes import run


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    w.patch_seams(monkeypatch)
    return w


def test_blue_green_deploy_switch_and_rollback_to_the_warm_slot(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def main() -> None:
        c = world.controller()
        await c.start()
        try:
            r1 = await c.deploy(str(spec), image_id="v1")
            r1 = await c.wait(r1.id, timeout=600)
            assert r1.phase is Phase.SUCCEEDED, r1.reason
            t = world.router.tables["shop"]
            assert t.weights == {"blue": 100.0} and len(t.tracks["blue"]) == 2 and t.releases == {"blue": "v1"}

            r2 = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=600)
            assert r2.phase is Phase.SUCCEEDED, r2.reason
            t = world.router.tables["shop"]
            assert t.weights == {"green": 100.0} and t.releases == {"blue": "v1", "green": "v2"}
            svc = world.store.get_service("shop")
            assert svc is not None and svc.active_slot == "green" and svc.slots["blue"].state == SlotState.WARM
            assert ("blue", "/") in world.preview.requests and ("green", "/products") in world.preview.requests
            warm = {i.id for i in world.runtime.live("shop", "blue")}
            assert len(warm) == 2
            started = len(world.runtime.started)

            r3 = await c.rollback("shop")
            assert r3.phase is Phase.SUCCEEDED and r3.kind == "rollback", r3.reason
            t = world.router.tables["shop"]
            assert t.weights == {"blue": 100.0}
            assert {u.id for u in t.tracks["blue"]} == warm      # the warm slot's very instances serve again
            assert len(world.runtime.started) == started           # nothing was started to roll back
        finally:
            await c.close()

    run(main(), world.clock)
