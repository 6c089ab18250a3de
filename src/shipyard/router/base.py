"""What the controller needs from a router, whatever data plane is behind it."""

from __future__ import annotations

from typing import Any, Protocol

from shipyard.router.table import RoutingTable


class Router(Protocol):
    async def ensure(self, service: str, listen: str) -> None:
        """Make sure a data plane serves `service` on `listen` (start or re-adopt it)."""
        ...

    async def apply(self, table: RoutingTable) -> None:
        """Swap the whole table atomically; returns once the data plane serves it."""
        ...

    async def current(self, service: str) -> RoutingTable | None:
        ...

    def pids(self, service: str) -> set[int]:
        """The data plane's processes for `service` (their listeners are shipyard's)."""
        ...

    async def stats(self, service: str) -> dict[str, Any]:
        """Per-track request counts, status classes and latency histogram."""
        ...

    async def series(self, service: str, since: float) -> dict[str, Any]:
        """Per-track, per-second metrics: what the canary analysis judges.

        Returns {"now": unix time (float), "series": {track: [point, ...]}} where a point is
        {"t": unix second, "requests": n, "errors": n, "latency": {"<bucket>": count}}:
        responses completed during that wall-clock second; errors are those with status
        >= 500 (the instance's 5xx, and the router's 502/503/504 for failed connects and
        timeouts); latency is a sparse histogram in `shipyard.histogram` buckets (request
        head received -> response sent). Only completed seconds with since < t < now are
        returned, ascending, from the last 600 s; a second with no traffic on a track is
        omitted, and must be read as zero requests. Poll again with
        since = int(now) - 1 to get each second exactly once. Track metrics survive table
        swaps, so a series is continuous across them; a router restart starts it afresh."""
        ...

    async def stop(self, service: str) -> None:
        ...
