"""A canary with a baseline (strategy.canary.baseline) driven by the real controller on the
fakes: the baseline starts with the canary from the stable image, takes as many users, is the
judge's reference, and is gone after promote and after abort."""

from __future__ import annotations

from pathlib import Path

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Phase
from shipyard.rollout.records import SlotState
from support.fake_world import World, drive, write_spec

STEPS = """\
strategy:
  canary:
    baseline: {baseline}
    steps:
      - set_weight: 10
      - analysis: {{duration: 10s}}
      - set_weight: 50
      - analysis: {{duration: 10s}}
    analysis: {{min_requests: 50, interval: 1s}}
"""


def aged_stable(world: World) -> None:
    """The long-running stable track answers in 1 ms, every fresh instance (canary and
    baseline, whatever release) in 20 ms: a difference of age, not of release."""
    world.router.traffic(track="blue", latency_ms=1.0)
    world.router.traffic(track="green", latency_ms=20.0)
    world.router.traffic(track="baseline", latency_ms=20.0)


def test_an_aa_canary_judged_against_its_baseline_is_promoted_and_the_baseline_goes(
        world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, STEPS.format(baseline="true"), replicas=4)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED
        aged_stable(world)
        before = len(world.router.applied["shop"])
        started = len(world.runtime.started)
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        seen: list[dict[str, float]] = []
        for _at, tb in world.router.applied["shop"][before:]:
            if not seen or seen[-1] != tb.weights:
                seen.append(dict(tb.weights))
        assert seen == [{"blue": 100.0}, {"green": 10.0, "baseline": 10.0, "blue": 80.0},
                        {"green": 50.0, "baseline": 50.0}, {"green": 100.0}]
        first = world.runtime.started[started:started + 2]
        assert sorted((i.slot, i.image_id) for i in first) == [("baseline", "v1"), ("green", "v2")]
        baseline = [i for i in world.runtime.started[started:] if i.slot == "baseline"]
        assert len(baseline) == 2                      # scaled with the canary: 1 at 10 %, 2 at 50 %
        analysis = world.store.get_analysis(r.id)
        assert analysis is not None and analysis["status"] == "successful" and analysis["reference"] == "baseline"
        assert sorted(i.slot for i in world.runtime.live("shop")) == ["green"] * 4
        assert "baseline" not in world.router.tables["shop"].tracks
        svc = world.store.get_service("shop")
        assert svc is not None and svc.slots["baseline"].state == SlotState.IDLE

    drive(world, body)


def test_the_same_aa_canary_judged_against_stable_fails_on_age_alone(world: World, tmp_path: Path) -> None:
    """The control: without a baseline the fresh canary loses to the aged stable track."""
    spec = write_spec(tmp_path, STEPS.format(baseline="false"), replicas=4)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED
        aged_stable(world)
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.FAILED and r.reason.startswith("analysis failed"), r.reason
        analysis = world.store.get_analysis(r.id)
        assert analysis is not None and analysis["reference"] == "blue"

    drive(world, body)


def test_a_bad_canary_with_a_baseline_is_withdrawn_with_it_in_one_swap(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, STEPS.format(baseline="true"), replicas=4)
    world.router.traffic(release="v2", error_rate=0.5)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED
        before = len(world.router.applied["shop"])
        r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
        assert r.phase is Phase.FAILED and r.reason.startswith("analysis failed"), r.reason
        tables = [tb for _at, tb in world.router.applied["shop"][before:]]
        shared = [i for i, tb in enumerate(tables) if tb.weights.get("green", 0) > 0]
        assert shared and all(tables[i].weights.get("baseline") == tables[i].weights["green"] for i in shared)
        back = shared[-1] + 1
        assert tables[back].weights == {"blue": 100.0}   # canary and baseline off in the very next table
        assert all(tb.weights == {"blue": 100.0} for tb in tables[back:])
        assert world.router.tables["shop"].tracks.keys() == {"blue"}
        assert world.runtime.live("shop", "green") == [] and world.runtime.live("shop", "baseline") == []
        assert world.store.get_analysis(r.id)["reference"] == "baseline"

    drive(world, body)


def test_a_dead_baseline_instance_is_replaced_while_the_canary_holds(world: World, tmp_path: Path) -> None:
    steps = STEPS.format(baseline="true").replace("      - analysis: {duration: 10s}\n      - set_weight: 50\n",
                                                 "      - pause: {}\n      - set_weight: 50\n")
    spec = write_spec(tmp_path, steps, replicas=4)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED
        r = await c.deploy(str(spec), image_id="v2")
        for _ in range(400):
            await world.clock.sleep(0.25)
            got = world.store.get_rollout(r.id)
            if got is not None and got.phase is Phase.PAUSED:
                break
        [victim] = world.runtime.live("shop", "baseline")
        world.runtime.kill(victim.id)
        for _ in range(60):
            await world.clock.sleep(0.25)
            ids = {u.id for u in world.router.tables["shop"].tracks.get("baseline", ())}
            if ids and victim.id not in ids:
                break
        [fresh] = world.runtime.live("shop", "baseline")
        assert fresh.id != victim.id and fresh.image_id == "v1"
        t = world.router.tables["shop"]
        assert {u.id for u in t.tracks["baseline"]} == {fresh.id}
        assert t.weights == {"green": 10.0, "baseline": 10.0, "blue": 80.0}

    drive(world, body)
