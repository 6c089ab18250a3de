"""The metrics feed keeps the last KEEP_SECONDS of wall time, whatever the traffic pattern:
a track that serves every other switch (blue-green, the router omits idle seconds) must not
hold hours of seconds, and a removed service takes its series with it (issue 13's soak)."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace
from typing import Any

from shipyard.analysis import Second
from shipyard.engine.metrics_feed import KEEP_SECONDS, MetricsFeed, pack, unpack


class SeriesRouter:
    """Answers `series` like the router: each second goes to the track live at that time."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def point(self, t: int) -> dict[str, Any]:
        return {"t": t, "requests": 100 + t % 7, "errors": t % 3, "latency": {str(b): b + t % 5 for b in range(20, 36)}}

    async def series(self, service: str, since: float) -> dict[str, Any]:
        t = self.now - 1
        track = "blue" if (t // 10) % 2 else "green"       # a switch every 10 s
        return {"now": self.now + 0.5, "series": {track: [self.point(t)] if t > since else []}}


def test_series_are_kept_for_keep_seconds_of_wall_time_not_per_track_count() -> None:
    router = SeriesRouter()
    feed = MetricsFeed(SimpleNamespace(router=router))  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(3 * KEEP_SECONDS):
            router.now += 1
            await feed.pull("shop")

    asyncio.run(main())
    kept = sum(len(r) for r in feed._series.values())  # noqa: SLF001 - the state under test
    assert KEEP_SECONDS - 2 <= kept <= KEEP_SECONDS
    upto = feed.complete_upto("shop")
    assert upto == router.now - 1
    blue = feed.seconds("shop", "blue", upto - 60, upto)
    green = feed.seconds("shop", "green", upto - 60, upto)
    for b, g in zip(blue, green, strict=True):
        served = b if b.requests else g
        assert served == Second.from_dict(router.point(served.t))
        assert (b.requests == 0) != (g.requests == 0)
    assert all(s.requests == 0 for s in feed.seconds("shop", "blue", upto - 3 * KEEP_SECONDS, upto - KEEP_SECONDS))

    feed.forget_others({"other"})
    assert feed._series == {} and feed.complete_upto("shop") == 0  # noqa: SLF001


def test_a_packed_second_reads_back_equal_and_is_smaller() -> None:
    s = Second.from_dict(SeriesRouter().point(7))
    p = pack(s)
    assert unpack(p) == s
    size = lambda *objs: sum(sys.getsizeof(o) for o in objs)  # noqa: E731
    assert size(p, p[3]) * 2 < size(s, s.latency)
