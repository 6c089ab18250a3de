"""One service's part of a router: its routing table compiled for the hot path, its instance
pools, its per-track metrics and its certificate. The listener (proxy_server.py) owns the sockets and
client connections, and picks a plane per request by host (hosts.py); everything a table
swap, a metric or a certificate touches is here, so one service's swap, rollback or removal
never reaches another's requests on the same address.

It is what an Exchange calls `client.server` (lifecycle.Plane): the client connection points
it at the plane of the exchange it is running."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.routes import FULL, RouteState, TrackRoute
from shipyard.router.dataplane.tls import TlsTerminator
from shipyard.router.dataplane.tries import TryWatch
from shipyard.router.dataplane.upstream import UpstreamState
from shipyard.router.table import RoutingTable, Upstream

log = logging.getLogger("shipyard.router")

NO_TRACK = "(none)"
"""Metrics key for requests that found no track (503: no live release)."""


class ServicePlane:
    """The data plane of one service on a listener: routing state, upstream pools, metrics."""

    def __init__(self, service: str, listen: str, table: RoutingTable | None, domains: tuple[str, ...] = (),
                 response_timeout: float = 60.0, redirect: str | None = None, workers: int = 1) -> None:
        self.service = service
        self.workers = workers
        """Router processes sharing the address (router.workers): this one enforces its share of
        the table's per-instance and queue limits, so they hold for the address in total."""
        self.listen = listen
        self.domains = domains
        """Host names routed here ((): every host, the listener's only service)."""
        self.redirect = redirect
        self.tls = TlsTerminator()
        if table is not None:   # a certificate that cannot be served stops the start (TableError)
            self.tls.serve(table.tls, self.tls.prepare(table.tls))
        self.response_timeout = response_timeout
        self.upstreams: dict[Upstream, UpstreamState] = {}
        self.track_metrics: dict[str, TrackMetrics] = {}
        self.track_releases: dict[str, str] = {}
        """The release each track's metrics belong to (from the tables; empty: not told)."""
        self.none_metrics = self._metrics(NO_TRACK)
        self.has_table = table is not None
        self.track_releases.update(table.releases if table else {})
        self.state = self._compile(table or RoutingTable(service))
        self.started = time.time()
        self.clock = 0.0
        """Coarse monotonic time, set by the listener's sweeper (deadlines only)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tries: TryWatch = None  # type: ignore[assignment]  # the listener's, given when it starts
        self.pumping = False
        self.removed = False

    @property
    def table(self) -> RoutingTable:
        return self.state.table

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self.tls.current

    def _metrics(self, track: str) -> TrackMetrics:
        m = self.track_metrics.get(track)
        if m is None:
            m = self.track_metrics[track] = TrackMetrics()
        return m

    def _compile(self, table: RoutingTable) -> RouteState:
        routes = {}
        for name, ups in table.tracks.items():
            states = []
            for u in ups:
                st = self.upstreams.get(u)
                if st is None:
                    st = self.upstreams[u] = UpstreamState(u, self.pump)
                states.append(st)
            routes[name] = TrackRoute(name, states, self._metrics(name),
                                      max(1, table.max_conns_per_instance // self.workers),
                                      table.queue_size // self.workers, table.queue_timeout)
        return RouteState(table, routes)

    def pump(self) -> None:
        """Hand free instance slots to the oldest waiting requests of each track."""
        if self.pumping:
            return  # a slot freed while pumping: the loop below sees it
        self.pumping = True
        try:
            for route in self.state.routes.values():
                q = route.waiting
                while q.count:
                    ex = q.head()
                    ups = route.pick(ex.tried)  # type: ignore[union-attr]
                    if ups is FULL:
                        break
                    q.pop()
                    if ups is None:
                        ex._dispatch()  # type: ignore[union-attr]  # answers 502: no instance left
                    else:
                        ex.send_to(ups)  # type: ignore[union-attr]
        finally:
            self.pumping = False

    def share(self, workers: int) -> None:
        """Enforce 1/`workers` of the limits from the next request on (the worker count changed)."""
        if workers == self.workers:
            return
        self.workers = workers
        if self.has_table:
            self.swap(self.table)
        else:
            self.state = self._compile(self.table)

    def check(self, table: RoutingTable) -> None:
        """TableError if `table`'s certificate cannot be served (control_server asks first)."""
        self.tls.prepare(table.tls)

    def swap(self, table: RoutingTable) -> None:
        """Serve `table` from the next request on; in-flight requests finish where they are
        (and count where they started). A track that now serves another release counts
        from zero: its counters and seconds belonged to the one before. A certificate that
        cannot be served raises TableError first, changing nothing."""
        ctx = self.tls.prepare(table.tls)
        for track, release in table.releases.items():
            if self.track_releases.get(track, release) != release:
                self.track_metrics[track] = TrackMetrics()
            self.track_releases[track] = release
        old, self.state = self.state, self._compile(table)
        self.has_table = True
        rotated = table.tls is not None and self.tls.fingerprint not in (None, table.tls.fingerprint)
        self.tls.serve(table.tls, ctx)
        if rotated:
            log.info("%s: serving certificate %s to new connections", self.service,
                     table.tls.fingerprint)  # type: ignore[union-attr]
        waiting = sorted((ex for r in old.routes.values() for ex in r.waiting.take_all()),
                         key=lambda ex: ex.queued_at)
        for ex in waiting:
            ex.reroute(self.state)  # type: ignore[attr-defined]
        live = {u for ups in table.tracks.values() for u in ups}
        for u in [u for u in self.upstreams if u not in live]:
            self.upstreams.pop(u).retire()
        self.pump()  # new instances may have room for requests that waited
        log.info("%s: serving table version %d (weights %s)", self.service, table.version,
                 ", ".join(f"{t}={w:g}" for t, w in sorted(table.weights.items())) or "none")

    def stats(self) -> dict[str, Any]:
        ups: dict[str, Any] = {}
        for track, route in self.state.routes.items():
            for st in route.upstreams:
                u = st.upstream
                ups[st.id] = {"track": track, "address": f"{u.host}:{u.port}", **st.metrics.snapshot()}
        return {
            "version": self.state.table.version,
            "uptime": round(time.time() - self.started, 3),
            "tracks": {name: {**m.snapshot(), "release": self.track_releases.get(name, "")}
                       for name, m in self.track_metrics.items() if name != NO_TRACK or m.requests},
            "upstreams": ups,
            "limits": {k: getattr(self.table, k) for k in
                       ("max_conns_per_instance", "queue_size", "queue_timeout", "per_try_timeout")},
            "tls": {"fingerprint": self.tls.fingerprint, "rotations": self.tls.rotations,
                    "redirect_http": self.redirect} if self.tls.fingerprint else None,
            "domains": list(self.domains),
        }

    def series(self, since: float) -> dict[str, Any]:
        """Per-track completed seconds after `since` (see TrackMetrics.series). Track metrics
        live across table versions, so a swap neither resets nor splits a second."""
        now = time.time()
        out = {}
        for name, m in self.track_metrics.items():
            points = m.series(since, now)
            if points or name != NO_TRACK:
                out[name] = points
        return {"now": now, "series": out}

    def expire_idle(self, now: float) -> None:
        self.clock = now
        for st in self.upstreams.values():
            st.expire_idle(now)

    def retire(self) -> None:
        """The service leaves the listener: no new request comes here; pooled connections close
        (in-flight requests finish on theirs)."""
        self.removed = True
        for st in self.upstreams.values():
            st.retire()
