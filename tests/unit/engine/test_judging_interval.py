"""`analysis.interval` is the built-in judge's cadence: during a canary the background
analysis judges once per interval on the Clock port, neither faster nor slower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shipyard.engine.controller import Controller
from shipyard.engine.judging import CanaryJudge
from shipyard.rollout.model import Phase
from support.fake_world import World, write_spec
from support.fakes import run

PAUSE = 60

CANARY = """\
strategy:
  canary:
    steps:
      - set_weight: 20
      - pause: {pause}s
    analysis: {{min_requests: 50, interval: {interval}s}}
"""


def background_ticks(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: int) -> list[float]:
    """Deploy v1 then a canary of v2 on the fakes; the virtual times of the judge's background ticks."""
    world.forbid_io(monkeypatch)
    spec = write_spec(tmp_path, CANARY.format(pause=PAUSE, interval=interval), replicas=2)
    at: list[float] = []
    tick = CanaryJudge.tick

    def counted(self: CanaryJudge, window_from: int | None = None, final: bool = False) -> Any:
        if window_from is None and not final:       # the background analysis, not an analysis step's verdict
            at.append(world.clock.monotonic())
        return tick(self, window_from, final)

    monkeypatch.setattr(CanaryJudge, "tick", counted)

    async def main() -> None:
        c: Controller = world.controller()
        await c.start()
        try:
            first = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=3600)
            assert first.phase is Phase.SUCCEEDED, first.reason
            r = await c.wait((await c.deploy(str(spec), image_id="v2")).id, timeout=3600)
            assert r.phase is Phase.SUCCEEDED, r.reason
        finally:
            await c.close()

    run(main(), world.clock)
    assert world.io_attempts == []
    return at


@pytest.mark.parametrize("interval", [2, 5])
def test_the_background_judge_runs_once_per_analysis_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              interval: int) -> None:
    at = background_ticks(World(tmp_path), tmp_path, monkeypatch, interval)
    gaps = [round(b - a, 6) for a, b in zip(at, at[1:], strict=False)]
    assert gaps and set(gaps) == {float(interval)}, gaps      # exactly the interval apart, on the virtual clock
    expected = PAUSE // interval
    assert expected - 1 <= len(at) <= expected + 1, (len(at), expected)
