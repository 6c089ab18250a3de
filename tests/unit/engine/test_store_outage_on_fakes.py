"""A store that refuses writes (disk full, locked by another process), on the fakes: the
driver does not take a step it cannot record, keeps the rollout at its last recorded step
and driven, retries with backoff and goes on once writes work; an abort sent during the
outage answers StoreUnavailable at once and is honoured after it. Traffic never moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.engine.driver import STALE_AFTER
from shipyard.errors import StoreUnavailable
from shipyard.rollout.model import Phase, Rollout
from support.fake_world import BLUE_GREEN, World, drive, write_spec

FULL = StoreUnavailable("no space left on device writing /state/state.db", "free space in /state")
MANUAL = BLUE_GREEN.replace("auto_promote: true", "auto_promote: false")


def fail_writes_once_stored(world: World, phase: Phase) -> None:
    """The store starts refusing right after it recorded a rollout in `phase` (once)."""
    def hook(r: Rollout) -> None:
        if r.phase is phase and r.image_id == "v2":
            world.store.fail_writes = FULL
            world.store.on_put_rollout = lambda r: None
    world.store.on_put_rollout = hook


async def first_release(c: Controller, spec: Path) -> None:
    r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
    if r.phase is Phase.AWAITING_PROMOTION:
        r = await c.promote("shop")
    assert r.phase is Phase.SUCCEEDED, r.reason


def test_a_step_that_cannot_be_recorded_is_not_taken_and_the_rollout_goes_on_after(
        world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        await first_release(c, spec)
        live = world.store.get_service("shop").active_slot
        table = world.table()
        fail_writes_once_stored(world, Phase.STARTING)
        r = await c.deploy(str(spec), image_id="v2")
        await world.clock.sleep(60)
        # held at its recorded step, still driven, nothing of the new step done, traffic untouched
        stored = world.store.get_rollout(r.id)
        assert stored is not None and stored.phase is Phase.STARTING
        assert r.id in c._drivers and not c._drivers[r.id].done()
        assert c.driver.waiting_on_store(r.id) is FULL
        assert [i.image_id for i in world.runtime.live("shop")] == ["v1", "v1"]
        assert world.table() == table
        # backoff: 0.25 s doubling to 5 s, so about a dozen tries a minute, not hundreds
        assert 5 <= world.store.refused_writes <= 60, world.store.refused_writes

        world.store.fail_writes = None
        done = await c.wait(r.id, timeout=3600)
        assert done.phase is Phase.SUCCEEDED, done.reason
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot != live and svc.live.image_id == "v2"
        assert c.driver.waiting_on_store(r.id) is None

    drive(world, body)


def test_the_switch_is_not_carried_out_while_its_step_cannot_be_recorded(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        await first_release(c, spec)
        live = world.store.get_service("shop").active_slot
        fail_writes_once_stored(world, Phase.PREVIEWING)     # the step to `switching` is refused
        r = await c.deploy(str(spec), image_id="v2")
        await world.clock.sleep(30)
        assert world.store.get_rollout(r.id).phase is Phase.PREVIEWING
        assert world.router.tables["shop"].weights == {live: 100.0}    # every user still on the old release
        world.store.fail_writes = None
        assert (await c.wait(r.id, timeout=3600)).phase is Phase.SUCCEEDED

    drive(world, body)


def test_an_abort_during_the_outage_answers_at_once_and_is_honoured_after(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, MANUAL)

    async def body(c: Controller) -> None:
        await first_release(c, spec)
        live = world.store.get_service("shop").active_slot
        c_table = world.table()
        fail_writes_once_stored(world, Phase.STARTING)
        r = await c.deploy(str(spec), image_id="v2")
        await world.clock.sleep(5)
        t0 = world.clock.now()
        with pytest.raises(StoreUnavailable) as refused:
            await c.abort("shop")
        assert world.clock.now() - t0 <= 2.5
        assert "no space left on device" in refused.value.message and "queued" in refused.value.message
        await world.clock.sleep(20)
        assert world.store.get_rollout(r.id).phase is Phase.STARTING     # still held, still driven
        assert not c._drivers[r.id].done()

        world.store.fail_writes = None
        done = await c.wait(r.id, timeout=3600)
        assert done.phase is Phase.ABORTED, (done.phase, done.reason)
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == live and svc.live.image_id == "v1"
        assert world.table() == c_table
        assert [i.image_id for i in world.runtime.live("shop")] == ["v1", "v1"]
        # and the service takes the next deploy
        again = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=5)
        assert again.phase in (Phase.AWAITING_PROMOTION, Phase.STARTING, Phase.PREVIEWING), again.phase

    drive(world, body)


def test_an_action_refused_half_way_is_run_again_and_leaves_no_unrecorded_instance(
        world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        await first_release(c, spec)
        real_put = world.store.put_instance

        def refusing_put(inst, status):   # type: ignore[no-untyped-def]
            if inst.image_id == "v2" and world.store.fail_writes is None and not refusing_put.done:
                refusing_put.done = True
                world.store.fail_writes = FULL
            real_put(inst, status)
        refusing_put.done = False          # type: ignore[attr-defined]
        world.store.put_instance = refusing_put   # type: ignore[method-assign]
        r = await c.deploy(str(spec), image_id="v2")
        await world.clock.sleep(20)
        # the instance started before its record was refused is stopped again: none runs unrecorded
        assert [i.image_id for i in world.runtime.live("shop")] == ["v1", "v1"]
        world.store.fail_writes = None
        assert (await c.wait(r.id, timeout=3600)).phase is Phase.SUCCEEDED
        assert sorted(i.image_id for i in world.runtime.live("shop")) == ["v1", "v1", "v2", "v2"]

    drive(world, body)


def test_a_step_refused_for_longer_than_stale_after_is_not_taken_the_rollout_is_aborted(
        world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        await first_release(c, spec)
        live = world.store.get_service("shop").active_slot
        fail_writes_once_stored(world, Phase.PREVIEWING)
        r = await c.deploy(str(spec), image_id="v2")
        await world.clock.sleep(STALE_AFTER + 60)
        assert world.store.get_rollout(r.id).phase is Phase.PREVIEWING and not c._drivers[r.id].done()
        world.store.fail_writes = None
        done = await c.wait(r.id, timeout=3600)
        # what was observed 6 minutes ago is not acted on: no switch, every user still on v1
        assert done.phase is Phase.ABORTED and "refused to record" in done.reason, (done.phase, done.reason)
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == live and svc.live.image_id == "v1"
        assert world.router.tables["shop"].weights == {live: 100.0}

    drive(world, body)


def test_a_crash_while_the_store_refuses_still_ends_the_rollout_once_it_writes(
        world: World, tmp_path: Path) -> None:
    """The crash path's own write is retried too: never an orphan that only a restart clears."""
    spec = write_spec(tmp_path)

    async def body(c: Controller) -> None:
        await first_release(c, spec)
        real = c.driver._observe

        async def buggy(r, spec, a, judge):  # type: ignore[no-untyped-def]
            if r.image_id == "v2" and r.phase is Phase.STARTING:
                world.store.fail_writes = FULL
                raise RuntimeError("a bug")
            return await real(r, spec, a, judge)
        c.driver._observe = buggy    # type: ignore[method-assign]
        r = await c.deploy(str(spec), image_id="v2")
        await world.clock.sleep(30)
        assert not c._drivers[r.id].done()                  # still driven, waiting to record the crash
        assert world.store.get_rollout(r.id).phase is Phase.STARTING
        world.store.fail_writes = None
        done = await c.wait(r.id, timeout=3600)
        assert done.phase in (Phase.FAILED, Phase.ABORTED) and "a bug" in done.reason, (done.phase, done.reason)
        assert r.id not in c._drivers
        c.driver._observe = real     # type: ignore[method-assign]
        again = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert again.phase is Phase.SUCCEEDED, again.reason

    drive(world, body)
