"""A routing table compiled for the hot path: tracks as round-robin lists, buckets as a list;
each track with its in-flight limit per instance, its queue and its panic threshold.

Kept apart from the proxy and the exchange so that both can use a route without
importing each other (the exchange picks instances, the proxy builds routes)."""

from __future__ import annotations

import hmac
from random import random as _random
from typing import Protocol

from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.upstream import UNPROVEN_LIMIT, UpstreamState
from shipyard.router.dataplane.waiting import WaitingQueue
from shipyard.router.table import (
    BUCKETS,
    DEFAULT_MAX_CONNS,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_QUEUE_TIMEOUT,
    RoutingTable,
    user_bucket,
)


class _Full:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FULL"


class Peer(Protocol):
    """What routing needs to know of a client connection: its address's user bucket."""

    def peer_bucket(self) -> int: ...


FULL = _Full()
"""pick()'s answer when instances are left but every one is at its limit: the request waits."""
PANIC_THRESHOLD = 0.5
"""Below this share of a track's instances in rotation, instances ejected on weak evidence
(timeouts, silences) are routed to again (Envoy's panic threshold): under overload every
instance is slow, and ejecting them one by one would turn slowness into an outage."""


class TrackRoute:
    """One track of one table version: its instances in round-robin order, the limit of
    requests in flight on each, and the queue of those waiting for a free one."""

    __slots__ = ("name", "upstreams", "rr", "metrics", "limit", "waiting")

    def __init__(self, name: str, upstreams: list[UpstreamState], metrics: TrackMetrics,
                 limit: int = DEFAULT_MAX_CONNS, queue_size: int = DEFAULT_QUEUE_SIZE,
                 queue_timeout: float = DEFAULT_QUEUE_TIMEOUT) -> None:
        self.name = name
        self.upstreams = upstreams
        self.rr = 0
        self.metrics = metrics
        self.limit = limit
        self.waiting = WaitingQueue(queue_size, queue_timeout, metrics)

    def pick(self, tried: list[UpstreamState] | None) -> UpstreamState | _Full | None:
        """Next instance in rotation, not already tried by this request, that can take one more
        request; FULL when the only ones left are at their limit; None when none is left. When
        all are ejected, an ejected one is still tried once: it may be back before its probe says so."""
        ups = self.upstreams
        n = len(ups)
        start = self.rr
        limit = self.limit
        busy = False
        panic: bool | None = None
        for k in range(n):
            u = ups[(start + k) % n]
            if tried is not None and u in tried:
                continue
            m = u.metrics
            if m.ejected:
                if not u.soft:
                    continue
                if panic is None:
                    panic = self._in_rotation() < PANIC_THRESHOLD * n
                if not panic:
                    continue
            if not (m.inflight < limit and (u.idle or u.unproven < UNPROVEN_LIMIT)):  # u.can_take, inline
                busy = True
                continue
            self.rr = (start + k + 1) % n
            return u
        if busy:
            return FULL
        for u in ups:
            if tried is None or u not in tried:
                if u.can_take(limit):
                    return u
                busy = True
        return FULL if busy else None

    def _in_rotation(self) -> int:
        return sum(1 for u in self.upstreams if not u.metrics.ejected)

    def may_eject(self, ups: UpstreamState) -> bool:
        """Whether weak evidence may take `ups` out: not if fewer than PANIC_THRESHOLD of the
        track's instances would be left in rotation."""
        left = self._in_rotation() - (0 if ups.metrics.ejected else 1)
        return left >= PANIC_THRESHOLD * len(self.upstreams)

    def has_other(self, ups: UpstreamState, tried: list[UpstreamState] | None) -> bool:
        """Whether another instance than `ups` (and those tried) could take the request."""
        return any(u is not ups and (tried is None or u not in tried) and not (u.metrics.ejected and not u.soft)
                   for u in self.upstreams)


class RouteState:
    """A table compiled for the hot path once, when it is swapped in: a request costs one
    dict lookup (override) or one hash and one list index (its user's bucket)."""

    __slots__ = ("table", "routes", "overrides", "by_bucket", "sticky_header", "sticky_cookie",
                 "sticky_address", "single", "preview_token", "per_try_timeout")

    def __init__(self, table: RoutingTable, routes: dict[str, TrackRoute]) -> None:
        self.table = table
        self.routes = routes
        self.overrides: dict[bytes, TrackRoute] = {
            **{a.encode("latin-1"): routes[t] for a, t in table.aliases.items()},
            **{t.encode("latin-1"): r for t, r in routes.items()}}
        """X-Shipyard-Track values (track names, then aliases) -> route, matched as raw bytes."""
        by_bucket: list[TrackRoute] = []
        for name, first, end in table.bucket_ranges():
            by_bucket += [routes[name]] * (end - first)
        self.by_bucket = by_bucket or None
        """Bucket (0..BUCKETS-1) -> route; None when no track takes traffic (503)."""
        serving = table.serving
        self.single = routes[serving[0]] if len(serving) == 1 else None
        """The only serving track, when there is one: a request without override skips the hash."""
        self.sticky_header = table.sticky_header.lower().encode("latin-1") if table.sticky_header else None
        self.sticky_cookie = table.sticky_cookie.encode("latin-1") if table.sticky_cookie else None
        self.sticky_address = table.sticky_client_address
        self.preview_token = table.preview_token.encode("latin-1") if table.preview_token else None
        """X-Shipyard-Track is honoured only with this X-Shipyard-Preview-Token; None: never."""
        self.per_try_timeout = table.per_try_timeout

    def preview_allowed(self, token: bytes | None) -> bool:
        """Whether a request's preview token is the service's (a constant-time compare, so the
        time of a refusal says nothing about how much of a guess was right)."""
        expected = self.preview_token
        return expected is not None and token is not None and hmac.compare_digest(expected, token)

    def route_for(self, override: bytes | None, hdrs: list[tuple[bytes, bytes]] | None, cookies: bytes | None,
                  client: Peer) -> TrackRoute | None:
        """Where a request goes: its X-Shipyard-Track override (track or alias), else its
        user's bucket, else a random bucket. None when no track takes traffic (503)."""
        if override is not None:
            route = self.overrides.get(override)
            if route is not None:
                return route
        if self.single is not None:  # what the bucket lookup would answer, without hashing
            return self.single
        by_bucket = self.by_bucket
        if by_bucket is None:
            return None
        key = None
        if self.sticky_header is not None and hdrs:
            for name, value in hdrs:
                if name.lower() == self.sticky_header:
                    key = value
                    break
        if not key and self.sticky_cookie is not None and cookies:
            for part in cookies.split(b";"):
                k, _, v = part.strip().partition(b"=")
                if k == self.sticky_cookie:
                    key = v
                    break
        if key:
            return by_bucket[user_bucket(key)]
        if self.sticky_address:
            b = client.peer_bucket()
            if b >= 0:
                return by_bucket[b]
        return by_bucket[int(_random() * BUCKETS)]
