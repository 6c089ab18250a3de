"""Per-second series of every track, pulled from each service's router once a second and
kept for the last 15 minutes: the default metric source of the canary analysis.

Kept by time, not by count: the router omits a track's idle seconds, so a ring of 900
entries per track would hold hours of a slot that serves every other switch. Stored
packed (a second is about 0.3 KB instead of 1.2 KB as a `Second` with its dict) and made a
`Second` again only when read, since the judge and the dashboard read a few windows while
the feed keeps every second of every track."""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections import deque

from shipyard.analysis import Second
from shipyard.engine.deps import Deps
from shipyard.errors import ShipyardError

log = logging.getLogger("shipyard.metrics")

KEEP_SECONDS = 900
PULL_EVERY = 1.0

Packed = tuple[int, int, int, "array[int]"]
"""t, requests, errors, latency as bucket, count, bucket, count, ... (uint32 each)."""


def pack(s: Second) -> Packed:
    flat = array("I")
    for bucket, count in sorted(s.latency.items()):
        flat.extend((bucket, count))
    return s.t, s.requests, s.errors, flat


def unpack(p: Packed) -> Second:
    t, requests, errors, flat = p
    return Second(t=t, requests=requests, errors=errors, latency=dict(zip(flat[::2], flat[1::2], strict=True)))


class MetricsFeed:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._series: dict[tuple[str, str], deque[Packed]] = {}
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
            services = {svc.name for svc in self.d.store.list_services()}
            for name in services:
                try:
                    await self.pull(name)
                except ShipyardError as e:
                    log.debug("no series from the router of %s: %s", name, e.message)
            self.forget_others(services)
            self.pulled.set()
            self.pulled.clear()
            await self.d.clock.sleep(PULL_EVERY)

    async def pull(self, service: str) -> None:
        since = self._since.get(service, 0.0)
        doc = await self.d.router.series(service, since)
        newest = since
        for track, points in (doc.get("series") or {}).items():
            ring = self._series.setdefault((service, track), deque(maxlen=KEEP_SECONDS))
            last = ring[-1][0] if ring else 0
            for p in points:
                s = Second.from_dict(p)
                if s.t > last:
                    ring.append(pack(s))
                    last = s.t
                newest = max(newest, s.t)
        now = float(doc.get("now") or 0.0)
        self._since[service] = max(newest, int(now) - 1) if now else newest
        self._trim(service, int(self._since[service]) - KEEP_SECONDS)

    def _trim(self, service: str, cutoff: int) -> None:
        """Drop the seconds at or before `cutoff`, and the tracks left with none."""
        for key in [k for k in self._series if k[0] == service]:
            ring = self._series[key]
            while ring and ring[0][0] <= cutoff:
                ring.popleft()
            if not ring:
                del self._series[key]

    def forget_others(self, services: set[str]) -> None:
        """A service that is gone takes its series with it."""
        for key in [k for k in self._series if k[0] not in services]:
            del self._series[key]
        for name in [n for n in self._since if n not in services]:
            del self._since[name]

    def seconds(self, service: str, track: str, after: int, upto: int) -> list[Second]:
        """Seconds after < t <= upto, one per second, idle seconds as zero."""
        have = {p[0]: p for p in self._series.get((service, track), ()) if after < p[0] <= upto}
        return [unpack(have[t]) if t in have else Second.empty(t) for t in range(after + 1, upto + 1)]

    def complete_upto(self, service: str) -> int:
        """The last second known complete for every track of the service."""
        return int(self._since.get(service, 0.0))
