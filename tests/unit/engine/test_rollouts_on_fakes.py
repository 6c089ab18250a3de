"""Whole rollouts driven by the real controller on the fakes of every port: no process,
no socket, no real waiting (virtual time), so each runs in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Phase
from shipyard.rollout.records import SlotState
from support.fake_world import BLUE_GREEN, CANARY, World, drive, write_spec


async def deployed(c: Controller, spec: Path, image: str) -> Phase:
    r = await c.wait((await c.deploy(str(spec), image_id=image)).id, timeout=3600)
    return r.phase


def test_blue_green_deploy_switch_and_rollback_to_the_warm_slot(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        t = world.router.tables["shop"]
        assert t.weights == {"blue": 100.0} and len(t.tracks["blue"]) == 2 and t.releases == {"blue": "v1"}
        before = len(world.router.applied["shop"])

        assert await deployed(c, spec, "v2") is Phase.SUCCEEDED
        during = [tb for _at, tb in world.router.applied["shop"][before:]]
        switch = next(i for i, tb in enumerate(during) if tb.weights == {"green": 100.0})
        assert switch > 0 and all(tb.weights == {"blue": 100.0} for tb in during[:switch])   # users stay on v1 ...
        assert "green" in during[switch - 1].tracks                  # ... while the preview route reaches v2
        assert all(tb.weights == {"green": 100.0} for tb in during[switch:])   # one swap, never back
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == "green" and svc.slots["blue"].state == SlotState.WARM
        assert ("green", "/") in world.health.requests and ("green", "/products") in world.health.requests
        warm = {i.id for i in world.runtime.live("shop", "blue")}
        assert len(warm) == 2
        started = len(world.runtime.started)

        r3 = await c.rollback("shop")
        assert r3.phase is Phase.SUCCEEDED and r3.kind == "rollback", r3.reason
        t = world.router.tables["shop"]
        assert t.weights == {"blue": 100.0}
        assert {u.id for u in t.tracks["blue"]} == warm      # the warm slot's very instances serve again
        assert len(world.runtime.started) == started           # nothing was started to roll back
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == "blue" and svc.slots["green"].state == SlotState.WARM

    drive(world, body)


def test_a_failed_preview_leaves_the_table_untouched_and_tears_the_new_slot_down(world: World,
                                                                               tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    world.runtime.answers("v2", "/products", 500, "boom")

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        live = {u.id for u in world.router.tables["shop"].tracks["blue"]}
        before = len(world.router.applied["shop"])
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.FAILED
        assert "GET /products on slot green answered 500, expected 200: boom" in r.reason
        assert all(tb.weights == {"blue": 100.0} for _at, tb in world.router.applied["shop"][before:])
        t = world.router.tables["shop"]
        assert set(t.tracks) == {"blue"} and {u.id for u in t.tracks["blue"]} == live
        assert world.runtime.live("shop", "green") == []
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == "blue" and svc.slots["green"].state == SlotState.IDLE

    drive(world, body)


def test_a_never_healthy_release_never_gets_traffic_and_the_reason_is_recorded(world: World,
                                                                              tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    world.runtime.never_healthy("v2")

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        before = len(world.router.applied["shop"])
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.FAILED
        assert "slot green did not become healthy" in r.reason and "not healthy after 10s" in r.reason
        assert all(set(tb.tracks) == {"blue"} and tb.weights == {"blue": 100.0}
                   for _at, tb in world.router.applied["shop"][before:])
        assert world.health.requests == [("blue", "/"), ("blue", "/products")]   # v1's preview only
        assert world.runtime.live("shop", "green") == []
        failed = world.store.last_event("shop", "rollout.failed", r.id)
        assert failed is not None and "did not become healthy" in failed.message

    drive(world, body)


def test_a_release_that_crashes_at_start_fails_with_its_exit_code(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    world.runtime.crashes("v2", exit_code=3)

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.FAILED and "process exited (code 3)" in r.reason
        assert world.router.tables["shop"].weights == {"blue": 100.0}

    drive(world, body)


def test_a_canary_walks_every_step_to_promotion(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CANARY, replicas=4)

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED   # a first canary release is promoted at once
        before = len(world.router.applied["shop"])
        began = world.clock.now()
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        seen: list[dict[str, float]] = []
        for _at, tb in world.router.applied["shop"][before:]:
            if not seen or seen[-1] != tb.weights:
                seen.append(dict(tb.weights))
        assert seen == [{"blue": 100.0}, {"green": 10.0, "blue": 90.0}, {"green": 50.0, "blue": 50.0},
                        {"green": 80.0, "blue": 20.0}, {"green": 100.0}]
        assert world.clock.now() - began >= 20                # the 10 s pause and the 10 s analysis took their time
        analysis = world.store.get_analysis(r.id)
        assert analysis is not None and analysis["status"] == "successful"
        assert sorted(i.slot for i in world.runtime.live("shop")) == ["green"] * 4
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == "green"

    drive(world, body)


def test_a_canary_aborted_by_a_failed_verdict_puts_every_user_back_on_stable_in_one_swap(
        world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CANARY, replicas=4)
    world.router.traffic(release="v2", error_rate=0.5)

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        before = len(world.router.applied["shop"])
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.FAILED and r.reason.startswith("analysis failed"), r.reason
        tables = [tb for _at, tb in world.router.applied["shop"][before:]]
        canary_at = [i for i, tb in enumerate(tables) if tb.weights.get("green", 0) > 0]
        assert canary_at and max(tb.weights["green"] for tb in tables if "green" in tb.weights) == 10.0
        back = canary_at[-1] + 1
        assert tables[back].weights == {"blue": 100.0}          # the very next table: everyone on stable
        assert all(tb.weights == {"blue": 100.0} for tb in tables[back:])
        assert world.router.tables["shop"].tracks.keys() == {"blue"}
        assert world.runtime.live("shop", "green") == []
        analysis = world.store.get_analysis(r.id)
        assert analysis is not None and analysis["status"] == "failed"

    drive(world, body)


def test_a_live_instance_that_dies_leaves_the_table_and_is_replaced(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        victim, survivor = world.runtime.live("shop", "blue")
        world.runtime.kill(victim.id)
        for _ in range(60):                              # the supervisor ticks every 0.25 s of virtual time
            await world.clock.sleep(0.25)
            ids = {u.id for u in world.router.tables["shop"].tracks["blue"]}
            if victim.id not in ids and len(ids) == 2:
                break
        ids = {u.id for u in world.router.tables["shop"].tracks["blue"]}
        assert victim.id not in ids and survivor.id in ids and len(ids) == 2
        assert len(world.runtime.live("shop", "blue")) == 2
        died = world.store.last_event("shop", "instance.died")
        assert died is not None and victim.id in died.message
        assert world.store.last_event("shop", "instance.replaced") is not None

    drive(world, body)


def test_a_warm_slot_retires_after_scale_down_delay_and_rollback_then_redeploys(world: World,
                                                                              tmp_path: Path) -> None:
    spec = write_spec(tmp_path, BLUE_GREEN.replace("scale_down_delay: 10m", "scale_down_delay: 1m"))

    async def body(c: Controller) -> None:
        assert await deployed(c, spec, "v1") is Phase.SUCCEEDED
        assert await deployed(c, spec, "v2") is Phase.SUCCEEDED
        svc = world.store.get_service("shop")
        assert svc is not None and svc.slots["blue"].retire_at == pytest.approx(world.clock.now() + 60, abs=1)
        await world.clock.sleep(59)
        assert len(world.runtime.live("shop", "blue")) == 2          # still warm just before its time
        await world.clock.sleep(2)
        assert world.runtime.live("shop", "blue") == []
        svc = world.store.get_service("shop")
        assert svc is not None and svc.slots["blue"].state == SlotState.IDLE
        started = len(world.runtime.started)

        r = await c.rollback("shop")
        r = await c.wait(r.id, timeout=3600)
        assert r.phase is Phase.SUCCEEDED and r.kind == "rollback" and r.image_id == "v1", r.reason
        assert len(world.runtime.started) == started + 2               # v1 started again: no warm slot left
        assert world.router.tables["shop"].weights == {"blue": 100.0}
        assert world.router.tables["shop"].releases["blue"] == "v1"

    drive(world, body)
