"""/metrics in Prometheus' text format: what the routers counted and what the daemon knows.

Built afresh on each scrape: the traffic series are the routers' own cumulative counters
(read over their control sockets, all services at once), everything else comes from
the state store. So a scrape is never stale, and a daemon restart loses nothing: the
counters live in the router processes and restart from zero only when a router does,
which Prometheus reads as a counter reset. No secrets: only names, counts, verdicts
and times. The metric names are listed with their meaning in docs/metrics.md."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from shipyard.engine.controller import Controller
from shipyard.errors import ShipyardError
from shipyard.server.metrics.state import state_families
from shipyard.server.metrics.traffic import traffic_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

ROUTER_TIMEOUT = 2.0
"""A router that does not answer in time is reported down for this scrape, not waited for."""


async def render(controller: Controller) -> bytes:
    services = controller.queries.list_services()
    stats = await asyncio.gather(*(_router_stats(controller, svc.name) for svc in services))
    families = [*traffic_families(services, stats), *state_families(controller, services)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields families already built for this one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _router_stats(controller: Controller, service: str) -> dict[str, Any] | None:
    try:
        return await asyncio.wait_for(controller.queries.router_stats(service), ROUTER_TIMEOUT)
    except (ShipyardError, OSError, TimeoutError):
        return None
