"""A router the supervisor finds dead is restarted and recorded: a `router.restarted` event
with how it ended, and the count /metrics exports; a live one is not counted."""

from __future__ import annotations

from pathlib import Path

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Phase
from support.fake_world import World, write_spec
from support.fakes import run


def test_a_dead_router_is_restarted_and_recorded(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def main() -> None:
        c = Controller(world.deps())
        await c.start()
        try:
            r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
            assert r.phase is Phase.SUCCEEDED, r.reason
            await world.clock.sleep(5)    # several router checks of a live router: nothing to record
            assert world.store.last_event("shop", "router.restarted") is None
            assert c.queries.router_restarts("shop") == 0
            world.router.crashes["shop"] = {"pid": 4242, "exit_code": None, "signal": "SIGKILL",
                                            "reason": "it was killed by SIGKILL"}
            await world.clock.sleep(5)
            ev = world.store.last_event("shop", "router.restarted")
            assert ev is not None and ev.data == {"pid": 4242, "exit_code": None, "signal": "SIGKILL"}
            assert ev.message == "the router for shop (pid 4242) was restarted: it was killed by SIGKILL"
            assert c.queries.router_restarts("shop") == 1
            assert world.router.tables["shop"].weights    # and it serves the current table again
        finally:
            await c.close()

    run(main(), world.clock)
    assert world.io_attempts == []


def test_a_router_that_exited_is_replaced_within_a_tick_not_at_the_next_full_check(world: World,
                                                                                   tmp_path: Path) -> None:
    """The full check runs every ROUTER_CHECK_EVERY (1 s); a router the adapter knows has exited
    is replaced at the next supervisor tick (0.25 s), so a crash costs a quarter of the gap."""
    from shipyard.engine.supervisor import ROUTER_CHECK_EVERY, TICK
    spec = write_spec(tmp_path)

    async def main() -> None:
        c = Controller(world.deps())
        await c.start()
        try:
            r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
            assert r.phase is Phase.SUCCEEDED, r.reason
            await world.clock.sleep(3)
            for _ in range(5):       # at different offsets from the last full check
                await world.clock.sleep(0.37)
                world.router.crashes["shop"] = {"pid": 4242, "exit_code": 1, "signal": None, "reason": "exit 1"}
                crashed = world.clock.monotonic()
                while "shop" in world.router.crashes:
                    await world.clock.sleep(0.01)
                assert world.clock.monotonic() - crashed <= TICK + 0.02 < ROUTER_CHECK_EVERY
            assert c.queries.router_restarts("shop") == 5
        finally:
            await c.close()

    run(main(), world.clock)
    assert world.io_attempts == []


def test_a_deploy_names_its_router_kind_and_repairs_do_not(world: World, tmp_path: Path) -> None:
    """The deploy passes the spec's router.kind to ensure; the supervisor's checks pass none
    (the router remembers the service's kind), so a repair never moves a service."""
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text() + "router: {kind: haproxy}\n")

    async def main() -> None:
        c = Controller(world.deps())
        await c.start()
        try:
            r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
            assert r.phase is Phase.SUCCEEDED, r.reason
            assert world.router.kinds == {"shop": "haproxy"}
            calls = len(world.router.ensured)
            world.router.kinds.clear()
            await world.clock.sleep(5)
            assert len(world.router.ensured) > calls and world.router.kinds == {}
        finally:
            await c.close()

    run(main(), world.clock)
    assert world.io_attempts == []
