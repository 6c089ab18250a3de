"""The supervisor probes serving instances on a start-to-start cadence and counts the
answers in order: a hung instance (a probe that only times out) is unhealthy after
`timeout + (unhealthy_threshold - 1) x interval`, and one that misses a single probe stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Phase
from shipyard.rollout.records import Instance, ProbeResult
from support.fake_world import World, write_spec
from support.fakes import FakeHealthProbe, run

TIMEOUT, INTERVAL, THRESHOLD = 1.0, 0.5, 3
"""The fake world's spec: health timeout 1s, interval 500ms, unhealthy_threshold 3 (default)."""


class HangingProbe(FakeHealthProbe):
    """An instance in `hung` answers no probe: each one waits its whole timeout, then fails.
    `misses` counts down single probes that time out before the instance answers again."""

    hung: set[str]
    misses: dict[str, int]

    async def check(self, inst: Instance, path: str, timeout: float) -> ProbeResult:
        if inst.id in self.hung or self.misses.get(inst.id, 0) > 0:
            if inst.id not in self.hung:
                self.misses[inst.id] -= 1
            await self.clock.sleep(timeout)
            return ProbeResult(ok=False, status=None, error=f"timed out after {timeout:g}s", seconds=timeout)
        return await super().check(inst, path, timeout)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    probe = HangingProbe(w.runtime, w.clock, w.router)
    probe.hung, probe.misses = set(), {}
    w.health = probe
    w.forbid_io(monkeypatch)
    return w


def serve(world: World, tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path)

    async def main() -> None:
        c: Controller = world.controller()
        await c.start()
        try:
            r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
            assert r.phase is Phase.SUCCEEDED, r.reason
            await world.clock.sleep(2.0)                  # steady state: healthy probes
            await body()
        finally:
            await c.close()

    run(main(), world.clock)
    assert world.io_attempts == []


def test_a_hung_instance_is_unhealthy_after_one_timeout_and_two_more_intervals(world: World,
                                                                               tmp_path: Path) -> None:
    probe = world.health
    assert isinstance(probe, HangingProbe)

    async def body() -> None:
        victim, _other = world.runtime.live("shop", "blue")
        hung_at = world.clock.monotonic()
        probe.hung.add(victim.id)
        found = None
        while found is None and world.clock.monotonic() - hung_at < 30:
            await world.clock.sleep(0.05)
            event = world.store.last_event("shop", "instance.unhealthy")
            if event is not None and victim.id in event.message:
                found = world.clock.monotonic() - hung_at
        expected = TIMEOUT + (THRESHOLD - 1) * INTERVAL
        assert found is not None and expected <= found <= expected + INTERVAL + 0.3, (found, expected)
        for _ in range(100):
            await world.clock.sleep(0.25)
            ids = {u.id for u in world.router.tables["shop"].tracks["blue"]}
            if victim.id not in ids and len(ids) == 2:
                break
        ids = {u.id for u in world.router.tables["shop"].tracks["blue"]}
        assert victim.id not in ids and len(ids) == 2              # left the table, replaced
        assert world.store.last_event("shop", "instance.replaced") is not None

    serve(world, tmp_path, body)


def test_an_instance_that_misses_fewer_probes_than_the_threshold_stays(world: World, tmp_path: Path) -> None:
    probe = world.health
    assert isinstance(probe, HangingProbe)

    async def body() -> None:
        slow, _other = world.runtime.live("shop", "blue")
        probe.misses[slow.id] = THRESHOLD - 1
        await world.clock.sleep(10.0)
        assert world.store.last_event("shop", "instance.unhealthy") is None
        assert slow.id in {u.id for u in world.router.tables["shop"].tracks["blue"]}

    serve(world, tmp_path, body)
