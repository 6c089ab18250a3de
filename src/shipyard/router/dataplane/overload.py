"""The steps overload adds to an exchange: waiting for a free instance, being re-routed
by a table swap while waiting, and the per-try retry away from a silent instance.

A mixin of exchange.Exchange (whose state it uses), kept apart so that the relay's state
machine stays readable on its own; exchange.py is the only module that uses it."""

from __future__ import annotations

from shipyard.router.dataplane.lifecycle import IDEMPOTENT, REPLAY_LIMIT, Attempt, Phase
from shipyard.router.dataplane.routes import RouteState, TrackRoute
from shipyard.router.dataplane.upstream import UpstreamConnection

RETRY_LATER = b"Retry-After: 1\r\n"
"""Sent with the 503 of a full queue or a queue timeout: an overload is usually over within a second."""


class OverloadSteps:
    """Exchange methods for overload; `self` is always an exchange.Exchange (not imported
    here: exchange imports this module)."""

    __slots__ = ()

    def _wait(self, route: TrackRoute, moved: bool) -> None:
        """Queue for `route` (`moved`: re-routed by a table swap, keeping its place in time)."""
        server = self.client.server
        live = server.state.routes.get(route.name)
        if live is not route:  # routed before a swap (a retry of an older request): wait in the live table
            live = live or self._route_in(server.state)
            if live is None:
                self.fail(503, f"service {server.service} has no live release")
                return
            self.route = route = live
        if not moved:
            self.queued_at = server.loop.time()  # type: ignore[union-attr]
        if not route.waiting.push(self, server.loop, force=moved):  # type: ignore[arg-type]
            route.metrics.queue_full += 1
            self.fail(503, f"service {server.service} is over capacity: every instance of track {route.name} "
                           f"has {route.limit} requests in flight (max_conns_per_instance) and "
                           f"{route.waiting.size} more wait (queue_size); retry later", RETRY_LATER)

    def queue_expired(self, waited: float) -> None:
        route = self.route
        assert route is not None
        route.metrics.queue_timeouts += 1
        self.fail(503, f"service {self.client.server.service} is over capacity: waited {waited:.1f}s "
                       f"(queue_timeout) for a free instance of track {route.name}, each has {route.limit} "
                       "requests in flight (max_conns_per_instance); retry later", RETRY_LATER)

    def reroute(self, st: RouteState) -> None:
        """A table swap while this request waited: it goes to the new table's track."""
        route = self._route_in(st)
        if route is None:
            self.fail(503, f"service {self.client.server.service} has no live release")
            return
        self.route = route
        self._wait(route, True)

    def _watch_try(self, conn: UpstreamConnection) -> None:
        """The request is fully sent on `conn`: time its first try, if it may be tried again."""
        server = self.client.server
        timeout = server.state.per_try_timeout
        if (timeout > 0 and self.attempt is not Attempt.MOVED and self.replay_size <= REPLAY_LIMIT
                and self.head.split(b" ", 1)[0] in IDEMPOTENT):
            server.tries.watch(self, conn, timeout)

    def try_expired(self, conn: UpstreamConnection) -> None:
        """per_try_timeout passed since the request went out on `conn`: if nothing came back,
        send it once to another instance of the track and take the silent one out."""
        if (self.conn is not conn or self.done or conn.answered or self.phase is not Phase.WAITING
                or self.attempt is Attempt.MOVED):
            return
        ups, route = self.ups, self.route
        assert ups is not None and route is not None
        if not route.has_other(ups, self.tried):
            return  # nowhere else to go: the overall response timeout decides
        self.last_error = ups.went_silent(self.client.server.state.per_try_timeout, route.may_eject(ups))
        self.conn = None
        conn.ex = None
        conn.close()
        self.attempt = Attempt.MOVED
        if self.tried is None:
            self.tried = [ups]
        else:
            self.tried.append(ups)
        self.wbuf.clear()
        self._dispatch()
