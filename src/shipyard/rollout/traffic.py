"""From what the daemon knows (live slot, healthy instances) to the routing table.

The table is always derived, never edited: every change of slot or instance health
rebuilds it whole, so what the router serves cannot drift from the recorded state."""

from __future__ import annotations

from collections.abc import Iterable

from shipyard.router.table import RoutingTable, Upstream
from shipyard.runtime.base import Instance
from shipyard.state.records import ServiceRecord

ROUTABLE = ("healthy",)


def build_table(svc: ServiceRecord, instances: Iterable[tuple[Instance, str]], version: int,
                sticky_header: str | None = None, sticky_cookie: str | None = None) -> RoutingTable:
    """Tracks are the slots with healthy instances (so the preview route reaches a new
    slot as soon as it is healthy); all unpinned traffic goes to the live slot. If the
    live slot has no healthy instance left we still route to its live processes rather
    than answer 503: the router ejects the ones that refuse connections."""
    healthy: dict[str, list[Upstream]] = {}
    alive: dict[str, list[Upstream]] = {}
    for inst, status in instances:
        up = Upstream(inst.id, inst.host, inst.port)
        alive.setdefault(inst.slot, []).append(up)
        if status in ROUTABLE:
            healthy.setdefault(inst.slot, []).append(up)
    tracks = {slot: tuple(ups) for slot, ups in sorted(healthy.items())}
    live = svc.active_slot
    if live and live not in tracks and alive.get(live):
        tracks[live] = tuple(alive[live])
    weights = {live: 100} if live and live in tracks else {}
    return RoutingTable(svc.name, version, tracks, weights, sticky_header, sticky_cookie)
