"""hosts drain / undrain / remove on the fakes: a drained host's instances are moved
make-before-break (the replacement healthy and routed before the old one leaves the table and
stops; the table never routes fewer than the target), the host gets nothing new, the state
survives a daemon restart, remove refuses while anything runs there and then holds the host
out though the spec lists it, undrain puts it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.errors import ConflictError, NotFoundError
from shipyard.rollout.model import Phase
from support.fake_world import World, drive
from unit.engine.test_fleet_on_fakes import ADDRESSES, fleet_spec

DRAINED = ADDRESSES[2]     # web-3


def on(world: World, address: str) -> list[str]:
    return [i.id for i, st in world.store.instances("shop") if i.host == address and st in ("starting", "healthy")]


def routed(world: World) -> list[str]:
    svc = world.store.get_service("shop")
    assert svc is not None and svc.active_slot is not None
    return sorted(u.host for u in world.router.tables["shop"].tracks[svc.active_slot])


async def until_empty(c: Controller, world: World, address: str, seconds: float = 120) -> None:
    for _ in range(int(seconds * 4)):
        if not c.host_states.instances_on(address):
            return
        await world.clock.sleep(0.25)
    raise AssertionError(f"{address} still runs {c.host_states.instances_on(address)}")


def test_drain_moves_make_before_break_and_persists_across_a_restart(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path, "{total: 5, max_per_host: 2}")

    async def first(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        [old] = on(world, DRAINED)
        tables_before = len(world.router.applied["shop"])
        doc = c.host_states.drain("web-3")
        assert (doc["state"], doc["address"], doc["services"]) == ("draining", DRAINED, ["shop"])
        await until_empty(c, world, DRAINED)
        assert DRAINED not in routed(world) and len(routed(world)) == 5
        for _at, table in world.router.applied["shop"][tables_before:]:     # never fewer than 5 routed
            svc = world.store.get_service("shop")
            assert svc is not None and svc.active_slot is not None
            assert len(table.tracks[svc.active_slot]) >= 5, table
        events = world.store.events("shop")
        [drained] = [e for e in events if e.kind == "host.drained"]
        [new] = drained.data["replacements"]
        healthy_at = next(e.id for e in events if e.kind == "instance.healthy" and e.data.get("instance") == new)
        stopped_at = next(e.id for e in events if e.kind == "instance.stopped" and e.data.get("instance") == old)
        assert healthy_at < stopped_at, "the replacement was healthy before the old instance stopped"
        assert c.host_states.show(DRAINED)["state"] == "draining"

    drive(world, first)

    async def after_restart(c: Controller) -> None:      # a new controller on the same store: still held
        assert c.host_states.show("web-3")["state"] == "draining"
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        assert on(world, DRAINED) == [] and DRAINED not in routed(world) and len(routed(world)) == 5
        c.host_states.undrain("web-3")
        assert c.host_states.show("web-3")["state"] == "up"
        await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)
        assert DRAINED in routed(world)

    drive(world, after_restart)


def test_remove_refuses_while_anything_runs_then_holds_the_host_out(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path)          # per_host 1: a drain shrinks the target, no replacement needed

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        with pytest.raises(ConflictError) as refused:
            c.host_states.remove("web-3")
        assert "still runs 1 instance(s)" in refused.value.message
        assert refused.value.hint == "drain it first: shipyard hosts drain web-3; then remove it"
        with pytest.raises(NotFoundError):
            c.host_states.drain("web-9")
        c.host_states.drain(DRAINED)                      # by address works too
        await until_empty(c, world, DRAINED)
        assert len(routed(world)) == 4 and DRAINED not in routed(world)
        doc = c.host_states.remove("web-3")
        assert doc["state"] == "removed" and "remove it from fleet.hosts" in doc["message"]
        assert world.store.host_states() == {DRAINED: "removed"}
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=600)
        assert r.phase is Phase.SUCCEEDED and DRAINED not in routed(world) and len(routed(world)) == 4
        kinds = [e.kind for e in world.store.events("shop")]
        assert "host.draining" in kinds and "host.drained" in kinds and "host.removed" in kinds

    drive(world, body)


def test_a_replacement_that_cannot_start_leaves_the_old_instance_serving(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path, "{total: 5, max_per_host: 2}")

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        [old] = on(world, DRAINED)
        world.runtime.refuse_start = "no room for another process"
        c.host_states.drain("web-3")
        await world.clock.sleep(3)
        [failed, *_] = [e for e in world.store.events("shop") if e.kind == "host.drain_failed"]
        assert "no room for another process" in failed.message and "keep serving" in failed.message
        assert on(world, DRAINED) == [old] and DRAINED in routed(world) and len(routed(world)) == 5
        world.runtime.refuse_start = None                       # tried again after RETRY_AFTER (5 s)
        await until_empty(c, world, DRAINED, seconds=30)
        assert DRAINED not in routed(world) and len(routed(world)) == 5

    drive(world, body)
