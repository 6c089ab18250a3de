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

    async def stats(self, service: str) -> dict[str, Any]:
        """Per-track request counts, status classes and latency histogram."""
        ...

    async def stop(self, service: str) -> None:
        ...
