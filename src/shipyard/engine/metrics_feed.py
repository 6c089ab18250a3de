"""Per-second series of every track, pulled from each service's router once a second and
kept for the last 15 minutes: the default metric source of the canary analysis."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from shipyard.analysis import Second
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError

log = logging.getLogger("shipyard.metrics")

KEEP_SECONDS = 900
PULL_EVERY = 1.0


class MetricsFeed:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._series: dict[tuple[str, str], deque[Second]] = {}
        self._since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.pulled = asyncio.Event()
        """Set after every pull, so a judge can wait for fresh seconds instead of polling."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metrics feed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            for svc in self.d.store.list_services():
                try:
                    await self.pull(svc.name)
                except ShipyardError as e:
                    log.debug("no series from the router of %s: %s", svc.name, e.message)
            self.pulled.set()
            self.pulled.clear()
            await self.d.clock.sleep(PULL_EVERY)

    async def pull(self, service: str) -> None:
        since = self._since.get(service, 0.0)
        doc = await self.d.router.series(service, since)
        newest = since
        for track, points in (doc.get("series") or {}).items():
            ring = self._series.setdefault((service, track), deque(maxlen=KEEP_SECONDS))
            last = ring[-1].t if ring else 0
            for p in points:
                s = Second.from_dict(p)
                if s.t > last:
                    ring.append(s)
                    last = s.t
                newest = max(newest, s.t)
        now = float(doc.get("now") or 0.0)
        self._since[service] = max(newest, int(now) - 1) if now else newest

    def seconds(self, service: str, track: str, after: int, upto: int) -> list[Second]:
        """Seconds after < t <= upto, one per second, idle seconds as zero."""
        have = {s.t: s for s in self._series.get((service, track), ()) if after < s.t <= upto}
        return [have.get(t) or Second.empty(t) for t in range(after + 1, upto + 1)]

    def complete_upto(self, service: str) -> int:
        """The last second known complete for every track of the service."""
        return int(self._since.get(service, 0.0))
