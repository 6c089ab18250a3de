"""The supervisor's per-instance probe state lives only as long as the instance is watched:
a daemon that deploys and rolls back every few seconds for days must not keep an entry for
every instance it ever ran (issue 13's soak)."""

from __future__ import annotations

from pathlib import Path

from shipyard.engine.controller import Controller
from shipyard.rollout.model import Phase
from support.fake_world import World, write_spec
from support.fakes import run


def probed(c: Controller) -> set[str]:
    s = c.supervisor
    return set(s._next_probe) | set(s._fails) | set(s._oks)   # noqa: SLF001 - the state under test


def test_probe_state_of_stopped_instances_is_dropped(world: World, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)

    async def main() -> None:
        c = world.controller()
        await c.start()
        try:
            for n in range(12):
                if n % 3 == 2:
                    r = await c.rollback("shop")
                else:
                    r = await c.deploy(str(spec), image_id=f"v{n}")
                assert (await c.wait(r.id, timeout=3600)).phase is Phase.SUCCEEDED
                await world.clock.sleep(2.0)                  # several supervisor passes
            watched = {i.id for slot in ("blue", "green") for i, st in world.store.instances("shop", slot)
                       if st in ("healthy", "unhealthy")}
            assert len(world.runtime.started) >= 16           # many instances came and went
            assert probed(c) and probed(c) <= watched, (sorted(probed(c) - watched), sorted(watched))
        finally:
            await c.close()

    run(main(), world.clock)
    assert world.io_attempts == []
