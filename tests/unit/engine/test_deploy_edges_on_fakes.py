"""Two edges of `deploy`, driven by the real controller on the fakes: a first release that
never serves leaves nothing registered (record, router, instances), even across a daemon
restart; a deploy whose only change is run.secret_env rolls out like `apply` would."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.errors import NotFoundError
from shipyard.rollout.model import Phase
from support.fake_world import BLUE_GREEN, World, drive, write_spec

MANUAL = BLUE_GREEN.replace("auto_promote: true", "auto_promote: false")


def assert_nothing_of_shop_remains(world: World, c: Controller) -> None:
    assert world.store.get_service("shop") is None
    assert world.store.list_services() == []
    assert "shop" not in world.router.listen and "shop" not in world.router.tables   # its router is stopped
    assert world.runtime.live("shop") == []
    assert world.store.instances("shop") == []
    with pytest.raises(NotFoundError):
        c.queries.status("shop")


def test_a_never_healthy_first_release_unregisters_the_service_and_a_good_one_then_deploys(
        world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    world.runtime.never_healthy("bad")

    async def body(c: Controller) -> None:
        r = await c.wait((await c.deploy(str(spec), image_id="bad")).id, timeout=3600)
        assert r.phase is Phase.FAILED and "did not become healthy" in r.reason
        assert_nothing_of_shop_remains(world, c)
        assert [x.id for x in world.store.rollouts("shop", 10)] == [r.id]        # history stays ...
        gone = world.store.last_event("shop", "service.unregistered", r.id)     # ... and says why
        assert gone is not None and f"its first release {r.id} failed" in gone.message
        assert world.store.last_event("shop", "rollout.failed", r.id) is not None

        good = await c.wait((await c.deploy(str(spec), image_id="good")).id, timeout=3600)
        assert good.phase is Phase.SUCCEEDED, good.reason
        svc = world.store.get_service("shop")
        assert svc is not None and svc.live is not None and svc.live.image_id == "good"
        assert world.router.listen["shop"] == "127.0.0.1:18080"
        assert world.router.tables["shop"].weights == {svc.active_slot: 100.0}

    drive(world, body)


def test_an_aborted_first_release_unregisters_too(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, MANUAL)

    async def body(c: Controller) -> None:
        r = await c.deploy(str(spec), image_id="v1")
        for _ in range(600):
            if (now := world.store.get_rollout(r.id)) is not None and now.phase is Phase.AWAITING_PROMOTION:
                break
            await world.clock.sleep(0.5)
        assert len(world.runtime.live("shop")) == 2          # it was up, waiting for promote
        ended = await c.abort("shop")
        assert ended.phase is Phase.ABORTED
        await c.wait(r.id, timeout=3600)                     # its last side effects are done
        assert_nothing_of_shop_remains(world, c)

    drive(world, body)


def test_a_failed_later_release_keeps_the_service(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    world.runtime.never_healthy("bad")

    async def body(c: Controller) -> None:
        assert (await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)).phase is Phase.SUCCEEDED
        r = await c.wait((await c.deploy(str(spec), image_id="bad")).id, timeout=3600)
        assert r.phase is Phase.FAILED
        svc = world.store.get_service("shop")
        assert svc is not None and svc.live is not None and svc.live.image_id == "v1"
        assert "shop" in world.router.listen and world.store.last_event("shop", "service.unregistered") is None

    drive(world, body)


def test_a_daemon_that_died_before_unregistering_finishes_it_when_it_starts(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path)
    world.runtime.never_healthy("bad")

    async def died_first(c: Controller) -> None:
        async def never(*_a: object) -> None:
            return None
        monkeypatch.setattr(c.ops, "unregister", never)          # the daemon dies right after the rollout ends
        r = await c.wait((await c.deploy(str(spec), image_id="bad")).id, timeout=3600)
        assert r.phase is Phase.FAILED and world.store.get_service("shop") is not None

    drive(world, died_first)
    world.store = world.store.reopen()

    async def restarted(c: Controller) -> None:
        assert_nothing_of_shop_remains(world, c)

    drive(world, restarted)


def test_a_deploy_whose_only_change_is_secret_env_rolls_out(world: World, tmp_path: Path) -> None:
    env = {"SHOP_KEY": "key-value-1c9f", "SHOP_KEY_NEXT": "key-value-77ab"}
    first = write_spec(tmp_path, name="first.yaml")
    first.write_text(first.read_text().replace("stop_timeout: 1s}", "stop_timeout: 1s, secret_env: [SHOP_KEY]}"))
    second = write_spec(tmp_path, name="second.yaml")
    second.write_text(second.read_text().replace("stop_timeout: 1s}",
                                                 "stop_timeout: 1s, secret_env: [SHOP_KEY_NEXT]}"))

    async def body(c: Controller) -> None:
        r1 = await c.wait((await c.deploy(str(first))).id, timeout=3600)
        assert r1.phase is Phase.SUCCEEDED and r1.image_id is not None
        same = await c.wait((await c.deploy(str(first))).id, timeout=3600)
        assert same.phase is Phase.SUCCEEDED and "nothing to do" in same.reason    # truly unchanged: a no-op
        started = len(world.runtime.started)

        r2 = await c.wait((await c.deploy(str(second))).id, timeout=3600)
        assert r2.phase is Phase.SUCCEEDED and "nothing to do" not in r2.reason, r2.reason
        assert r2.image_id == r1.image_id                       # the same image, a new release
        assert len(world.runtime.started) == started + 2
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot == r2.target_slot != r1.target_slot
        envs = [world.runtime.procs[i.id].launch.env for i in world.runtime.live("shop", r2.target_slot)]
        assert len(envs) == 2 and all(e.get("SHOP_KEY_NEXT") == "key-value-77ab" and "SHOP_KEY" not in e
                                      for e in envs)
        changed = world.store.last_event("shop", "release.changed", r2.id)
        assert changed is not None and "run.secret_env" in changed.message and "SHOP_KEY_NEXT" in changed.message
        every = repr(world.store.events("shop")) + repr(world.store.rollouts("shop", 10))
        assert "key-value" not in every                         # names only, never a secret's value

    drive(world, body, env)
