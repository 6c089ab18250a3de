"""A fleet spec on the fakes: placement puts one instance per host (${HOST} in argv is that
host), new instances start in batches of fleet.batch.max_parallel with one `fleet.batch`
event each, a broken release stops at its first batch with nothing of it left running, and
a host silent for lost_after is lost (event + audit), its instance off the edge and replaced
on a remaining host."""

from __future__ import annotations

from pathlib import Path

from shipyard.engine import fleet_sweep
from shipyard.engine.actions import spec_from_doc
from shipyard.engine.controller import Controller
from shipyard.errors import RuntimeFailure
from shipyard.rollout.model import Phase
from shipyard.rollout.records import Instance
from support.fake_world import CANARY, SPEC_HEAD, World, drive

ADDRESSES = [f"10.9.0.{n}" for n in range(1, 6)]
FLEET = """\
fleet:
  hosts:
{hosts}
  ssh: {{user: root, identity: id_test}}
  placement: {placement}
  batch: {{max_parallel: 2}}
  lost_after: 10s
"""
BLUE_GREEN = """\
strategy:
  blue_green: {auto_promote: true, scale_down_delay: 10m}
"""


def fleet_spec(root: Path, placement: str = "{per_host: 1}", strategy: str = BLUE_GREEN) -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    hosts = "\n".join(f"    - {{name: web-{n}, address: {a}}}" for n, a in enumerate(ADDRESSES, 1))
    head = SPEC_HEAD.replace("replicas: {replicas}\n", "").replace("[app, --port,", "[app, --host, '${{HOST}}', --port,")
    path = root / "shop.yaml"
    path.write_text(head.format() + FLEET.format(hosts=hosts, placement=placement) + strategy)
    return path


def live(world: World, slot: str | None = None) -> list[str]:
    return sorted(i.host for i in world.runtime.live("shop", slot))


def batches(world: World, rollout_id: str) -> list[list[str]]:
    return [e.data["hosts"] for e in world.store.events("shop", rollout_id=rollout_id) if e.kind == "fleet.batch"]


def test_one_instance_per_host_in_batches_of_two_and_host_in_argv(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path)
    world.images.add("v1", command=["app", "--host", "${HOST}", "--port", "${PORT}"])

    async def body(c: Controller) -> None:
        r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        assert live(world) == ADDRESSES
        for proc in world.runtime.procs.values():
            assert proc.launch.command[:3] == ["app", "--host", proc.inst.host]
        assert batches(world, r.id) == [ADDRESSES[0:2], ADDRESSES[2:4], ADDRESSES[4:5]]
        assert world.fleet.hosts["shop"] == ADDRESSES

        r2 = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=600)
        assert r2.phase is Phase.SUCCEEDED, r2.reason
        assert len(batches(world, r2.id)) == 3
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot is not None
        assert live(world, svc.active_slot) == ADDRESSES
        table = world.router.tables["shop"]
        assert sorted(u.host for u in table.tracks[svc.active_slot]) == ADDRESSES

    drive(world, body)


def test_a_broken_release_stops_at_its_first_batch_and_leaves_nothing(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path)
    world.runtime.never_healthy("v3")

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        r = await c.wait((await c.deploy(str(spec), image_id="v3")).id, timeout=600)
        assert r.phase is Phase.FAILED
        assert "batch 1" in r.reason, r.reason
        assert len(batches(world, r.id)) == 1
        assert [i for i in world.runtime.live("shop") if i.image_id == "v3"] == []
        assert sum(1 for i in world.runtime.started if i.image_id == "v3") == 2
        assert live(world) == ADDRESSES        # v1 serves on

    drive(world, body)


def test_a_silent_host_is_lost_and_its_instance_replaced_elsewhere(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path, "{total: 5, max_per_host: 2}")

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        silent = ADDRESSES[2]
        world.fleet.silence(silent, world.clock.monotonic())
        await world.clock.sleep(5)
        assert not [e for e in world.store.events("shop") if e.kind == "host.lost"], "lost before lost_after"
        await world.clock.sleep(10)
        [lost] = [e for e in world.store.events("shop") if e.kind == "host.lost"]
        assert lost.data["host"] == "web-3" and len(lost.data["instances"]) == 1
        assert [a for a in world.store.audit.entries("shop") if a.action == "host.lost"]
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot is not None
        routed = [i.host for i, st in world.store.instances("shop", svc.active_slot) if st == "healthy"]
        assert silent not in routed and len(routed) == 5
        table = world.router.tables["shop"]
        assert silent not in {u.host for u in table.tracks[svc.active_slot]}
        assert any(e.kind == "instance.replaced" for e in world.store.events("shop"))

    drive(world, body)


def test_a_lost_host_that_answers_again_has_its_old_instance_stopped_not_readopted(
        world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path, "{total: 5, max_per_host: 2}")

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        silent = ADDRESSES[1]
        [old] = [i for i in world.runtime.live("shop") if i.host == silent]
        world.fleet.silence(silent, world.clock.monotonic())
        await world.clock.sleep(15)
        assert world.store.instance(old.id) == (old, "lost")
        assert world.runtime.is_alive(old) and old.id not in world.runtime.stopped   # a silent host: no stop sent
        world.fleet.answer(silent)
        await world.clock.sleep(2)
        assert old.id in world.runtime.stopped and not world.runtime.is_alive(old)
        assert world.store.instance(old.id) == (old, "stopped")
        [back] = [e for e in world.store.events("shop") if e.kind == "host.back"]
        assert back.data["host"] == "web-2" and back.data["instances"] == [old.id]
        assert any(e.kind == "instance.stopped" and e.data["instance"] == old.id for e in world.store.events("shop"))
        assert [a for a in world.store.audit.entries("shop") if a.action == "host.back"]
        routed = sorted(i.host for i, st in world.store.instances("shop") if st == "healthy")
        assert len(routed) == 5 and silent not in routed       # not re-adopted, nothing new placed there
        await world.clock.sleep(5)
        assert len([e for e in world.store.events("shop") if e.kind == "host.back"]) == 1

    drive(world, body)


def test_a_stop_that_fails_on_a_returned_host_is_tried_again_and_told_once(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path, "{total: 5, max_per_host: 2}")

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        silent = ADDRESSES[3]
        [old] = [i for i in world.runtime.live("shop") if i.host == silent]
        world.fleet.silence(silent, world.clock.monotonic())
        await world.clock.sleep(15)
        stop, refusals = world.runtime.stop, [3]

        async def flaky(inst: Instance, timeout: float) -> None:
            if refusals[0] > 0:
                refusals[0] -= 1
                raise RuntimeFailure(f"cannot stop {inst.id}: the helper on web-4 did not answer")
            await stop(inst, timeout)
        world.runtime.stop = flaky  # type: ignore[method-assign]
        world.fleet.answer(silent)
        await world.clock.sleep(10)
        kinds = [e.kind for e in world.store.events("shop")]
        assert kinds.count("host.back") == 1 and kinds.count("host.back_stop_failed") == 1, kinds
        assert world.store.instance(old.id) == (old, "stopped") and not world.runtime.is_alive(old)

    drive(world, body)


def test_a_restarted_controller_stops_instances_no_record_holds(world: World, tmp_path: Path) -> None:
    """What a controller killed between a start on a host and its record left there."""
    spec = fleet_spec(tmp_path)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        [recorded] = [i.id for i in world.runtime.live("shop") if i.host == ADDRESSES[0]]
        world.fleet.running[ADDRESSES[0]] = [recorded, "shop-green-0rphan", "shopfront-blue-abc"]
        await fleet_sweep.stop_unrecorded(c.d, c.ops, world.store.list_services(), spec_from_doc)
        assert world.fleet.running[ADDRESSES[0]] == [recorded, "shopfront-blue-abc"]   # another service's: left
        [told] = [e for e in world.store.events("shop") if e.kind == "instance.unrecorded_stopped"]
        assert told.data == {"address": ADDRESSES[0], "instances": ["shop-green-0rphan"]}

    drive(world, body)


def test_a_canary_on_a_fleet_starts_on_few_hosts_and_ends_on_all(world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path, strategy=CANARY)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED
        r = await c.deploy(str(spec), image_id="v2")
        for _ in range(200):
            svc = world.store.get_service("shop")
            assert svc is not None
            if svc.canary_slot is not None:
                break
            await world.clock.sleep(0.25)
        assert svc.canary_slot is not None
        assert len([i for i in world.runtime.live("shop") if i.image_id == "v2"]) == 1   # 10% of 5, rounded up
        r = await c.wait(r.id, timeout=3600)
        assert r.phase is Phase.SUCCEEDED, r.reason
        assert sorted(i.host for i in world.runtime.live("shop") if i.image_id == "v2") == ADDRESSES

    drive(world, body)


def test_hosts_that_cannot_be_reached_are_told_once_and_their_instances_left_alone(
        world: World, tmp_path: Path) -> None:
    spec = fleet_spec(tmp_path)

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)).phase is Phase.SUCCEEDED

        async def refuse(*args: object) -> None:
            raise RuntimeFailure("the SSH identity id_test does not exist", hint="point fleet.ssh.identity at a key")
        world.fleet.use = refuse  # type: ignore[method-assign]
        await world.clock.sleep(5)
        errors = [e for e in world.store.events("shop") if e.kind == "fleet.error"]
        assert len(errors) == 1 and "id_test" in errors[0].message
        assert sorted(i.host for i, st in world.store.instances("shop") if st == "healthy") == ADDRESSES

    drive(world, body)
