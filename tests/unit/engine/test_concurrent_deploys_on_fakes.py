"""Issue 13: deploys of one service released at once, on the fakes of every port. The fake
router's `ensure` yields to the loop, as a real router start does, so the deploys really
interleave; exactly one may begin, the others are refused naming it, and the loser leaves
nothing behind (no service record, no event, no router start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.errors import ConflictError
from shipyard.rollout.model import Phase, Rollout
from support.fake_world import CANARY, World, write_spec
from support.fakes import run

N = 5
ROUNDS = 6


async def race(c: Controller, spec: Path, image: str, n: int = N) -> tuple[list[Rollout], list[ConflictError]]:
    """`n` deploys of one spec gathered at once: (accepted, refused)."""
    got = await asyncio.gather(*(c.deploy(str(spec), image_id=image) for _ in range(n)), return_exceptions=True)
    unexpected = [g for g in got if not isinstance(g, (Rollout, ConflictError))]
    assert not unexpected, unexpected
    return [g for g in got if isinstance(g, Rollout)], [g for g in got if isinstance(g, ConflictError)]


def only_one_began(world: World, accepted: list[Rollout], refused: list[ConflictError]) -> Rollout:
    assert len(accepted) == 1, [r.id for r in accepted]
    (r,) = accepted
    assert len(refused) == N - 1
    for e in refused:
        assert e.message == f"shop already has a rollout in progress ({r.id}, phase {r.phase})", e.message
        assert e.hint and "shipyard rollback shop" in e.hint
    created = [e for e in world.store.events("shop") if e.kind == "rollout.created" and e.rollout_id == r.id]
    assert len(created) == 1
    return r


def test_five_first_deploys_at_once_begin_exactly_one(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def body() -> None:
        c = world.controller()
        await c.start()
        try:
            accepted, refused = await race(c, spec, "v1")
            r = only_one_began(world, accepted, refused)
            assert [x.id for x in world.store.rollouts("shop")] == ["shop-1"] == [r.id]
            assert world.router.ensured == ["shop"]        # the losers started no router
            assert (await c.wait(r.id, timeout=3600)).phase is Phase.SUCCEEDED
            assert len(world.runtime.live("shop")) == 2
            assert world.router.tables["shop"].releases == {"blue": "v1"}
        finally:
            await c.close()
    run(body(), world.clock)
    assert world.io_attempts == []


@pytest.mark.parametrize("strategy", ["blue_green", "canary"])
def test_five_deploys_at_once_onto_a_live_service_begin_exactly_one_every_round(
        world: World, tmp_path: Path, strategy: str) -> None:
    spec = write_spec(tmp_path, CANARY, replicas=4) if strategy == "canary" else write_spec(tmp_path)
    replicas = 4 if strategy == "canary" else 2

    async def body() -> None:
        c = world.controller()
        await c.start()
        try:
            for k in range(1, ROUNDS + 1):
                accepted, refused = await race(c, spec, f"v{k}")
                r = only_one_began(world, accepted, refused)
                assert r.id == f"shop-{k}"                  # numbered in the same transaction: no gap, no twin
                done = await c.wait(r.id, timeout=3600)
                assert done.phase is Phase.SUCCEEDED, done.reason
                svc = world.store.get_service("shop")
                assert svc is not None and svc.active_slot is not None
                live = world.runtime.live("shop", svc.active_slot)
                assert len(live) == replicas and {i.image_id for i in live} == {f"v{k}"}
                t = world.router.tables["shop"]
                assert t.weights == {svc.active_slot: 100.0} and t.releases[svc.active_slot] == f"v{k}"
                assert len(t.tracks[svc.active_slot]) == replicas
            assert len(world.store.rollouts("shop")) == ROUNDS
        finally:
            await c.close()
    run(body(), world.clock)
    assert world.io_attempts == []


def test_a_rollback_and_deploys_at_once_begin_exactly_one(world: World, tmp_path: Path) -> None:
    """The rollback to the warm slot goes through the same door as a deploy."""
    spec = write_spec(tmp_path)

    async def body() -> None:
        c = world.controller()
        await c.start()
        try:
            for image in ("v1", "v2"):
                assert (await c.wait((await c.deploy(str(spec), image_id=image)).id, 3600)).phase is Phase.SUCCEEDED
            got = await asyncio.gather(c.rollback("shop"), *(c.deploy(str(spec), image_id="v3") for _ in range(3)),
                                       return_exceptions=True)
            accepted = [g for g in got if isinstance(g, Rollout)]
            refused = [g for g in got if isinstance(g, ConflictError)]
            assert len(accepted) == 1 and len(refused) == 3, got
            (r,) = accepted
            assert all(f"({r.id}, phase " in e.message for e in refused), [e.message for e in refused]
            assert [x.id for x in world.store.rollouts("shop")][0] == r.id == "shop-3"
            await c.wait(r.id, timeout=3600)
            assert world.store.active_rollouts("shop") == []
        finally:
            await c.close()
    run(body(), world.clock)
    assert world.io_attempts == []
