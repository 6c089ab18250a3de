"""From what the daemon knows (live slot, healthy instances) to the routing table.

The table is always derived, never edited: every change of slot or instance health
rebuilds it whole, so what the router serves cannot drift from the recorded state."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from shipyard.rollout.records import BASELINE_MAX_WEIGHT, BASELINE_SLOT, Instance, ServiceRecord
from shipyard.router.table import RoutingTable, TableTls, Upstream
from shipyard.spec import RouterSpec

ROUTABLE = ("healthy",)


def preview_token(secret: str, service: str) -> str:
    """The service's preview token: HMAC-SHA256(secret, "preview:" + service), hex. Derived, not
    stored, so the daemon that pushes the table and the one that runs the preview checks agree
    without a new file, and a rotated API token rotates every preview token with it."""
    return hmac.new(secret.encode(), b"preview:" + service.encode(), hashlib.sha256).hexdigest()


def build_table(svc: ServiceRecord, instances: Iterable[tuple[Instance, str]], version: int,
                sticky_header: str | None = None, sticky_cookie: str | None = None,
                sticky_client_address: bool = False, preview_token: str | None = None,
                limits: RouterSpec | None = None, tls: TableTls | None = None) -> RoutingTable:
    """Tracks are the slots with healthy instances (so the preview route reaches a new
    slot as soon as it is healthy); all unpinned traffic goes to the live slot. If the
    live slot has no healthy instance left we still route to its live processes rather
    than answer 503: the router ejects the ones that refuse connections. A canary slot
    takes its weight of the users, from the lowest buckets up (so raising it only adds
    users), and `X-Shipyard-Track: canary|stable` reach the two sides (for requests that
    carry `preview_token` in X-Shipyard-Preview-Token; without a token, for nobody). `limits`
    A baseline slot (the stable release started with the canary) takes the next buckets,
    as many as the canary, while the canary's weight is at most 50 % (its track is named
    `baseline`, so `X-Shipyard-Track: baseline` reaches it).
    (the live release's `router` section) bounds the requests in flight per instance and
    their queue; None: the defaults. `tls`: the certificate the listener serves (None: plain HTTP)."""
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
    weights: dict[str, float] = {live: 100.0} if live and live in tracks else {}
    order: tuple[str, ...] = ()
    aliases: dict[str, str] = {}
    canary = svc.canary_slot
    if live and live in tracks:
        aliases["stable"] = live
    if canary and canary in tracks and weights:
        share = min(100.0, max(0.0, svc.slots[canary].weight))
        weights = {canary: share, live: round(100.0 - share, 2)} if share < 100 else {canary: 100.0}
        order = (canary, live) if share < 100 else (canary,)
        aliases["canary"] = canary
        if svc.baseline is not None and BASELINE_SLOT in tracks and 0 < share <= BASELINE_MAX_WEIGHT:
            weights = {canary: share, BASELINE_SLOT: share}
            if share < BASELINE_MAX_WEIGHT:
                weights[live] = round(100.0 - 2 * share, 2)
            order = tuple(weights)
    releases = {slot: s.image_id for slot in tracks if (s := svc.slots.get(slot)) is not None and s.image_id}
    r = limits or RouterSpec()
    return RoutingTable(svc.name, version, tracks, weights, sticky_header, sticky_cookie,
                        sticky_client_address=sticky_client_address, bucket_order=order, aliases=aliases,
                        releases=releases, preview_token=preview_token,
                        max_conns_per_instance=r.max_conns_per_instance, queue_size=r.queue_size,
                        queue_timeout=r.queue_timeout, per_try_timeout=r.per_try_timeout, tls=tls)
