"""The embedded data plane: an HTTP/1.1 reverse proxy serving one service's routing table.

Run as its own process (`python -m shipyard.router.proxy --service shop --listen
127.0.0.1:8080 --control S --table T`) so it keeps serving its last table when the
daemon dies. It is built on asyncio Protocols + httptools (uvloop when present)
because every request of the service crosses it: no per-request task, no timer
per request (one sweeper checks deadlines), no copy of bodies beyond one chunk.

A table swap replaces one reference. Requests already sent finish on their
instance; the next request of a keep-alive connection sees the new table; a swap
never closes a client connection (the failure mode of nginx/Caddy reloads)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from random import random as _random
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.client import ClientConnection
from shipyard.router.control import ControlService, claim_socket, load_table, remove_socket, serve_control
from shipyard.router.metrics import TrackMetrics
from shipyard.router.table import BUCKETS, RoutingTable, Upstream, user_bucket
from shipyard.router.upstream import UpstreamState

log = logging.getLogger("shipyard.router")

NO_TRACK = "(none)"
"""Metrics key for requests that found no track (503: no live release)."""
SWEEP_INTERVAL = 1.0
DRAIN_TIMEOUT = 10.0


class TrackRoute:
    """One track of one table version: its instances in round-robin order."""

    __slots__ = ("name", "upstreams", "rr", "metrics")

    def __init__(self, name: str, upstreams: list[UpstreamState], metrics: TrackMetrics) -> None:
        self.name = name
        self.upstreams = upstreams
        self.rr = 0
        self.metrics = metrics

    def pick(self, tried: list[UpstreamState] | None) -> UpstreamState | None:
        """Next instance that is neither ejected nor already tried by this request. When all
        are ejected, an ejected one is still tried once: it may be back before its probe says so."""
        ups = self.upstreams
        n = len(ups)
        start = self.rr
        for k in range(n):
            u = ups[(start + k) % n]
            if not u.metrics.ejected and (tried is None or u not in tried):
                self.rr = (start + k + 1) % n
                return u
        for u in ups:
            if tried is None or u not in tried:
                return u
        return None


class RouteState:
    """A table compiled for the hot path once, when it is swapped in: a request costs one
    dict lookup (override) or one hash and one list index (its user's bucket)."""

    __slots__ = ("table", "routes", "overrides", "by_bucket", "sticky_header", "sticky_cookie",
                 "sticky_address", "single")

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

    def route_for(self, override: bytes | None, hdrs: list[tuple[bytes, bytes]] | None, cookies: bytes | None,
                  client: ClientConnection) -> TrackRoute | None:
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


class ProxyServer:
    """The data plane of one service: listener, routing state, upstream pools, metrics."""

    def __init__(self, service: str, listen: str, table: RoutingTable | None = None,
                 response_timeout: float = 60.0, client_idle_timeout: float = 75.0,
                 client_head_timeout: float = 30.0) -> None:
        self.service = service
        self.listen = listen
        self.response_timeout = response_timeout
        self.client_idle_timeout = client_idle_timeout
        self.client_head_timeout = client_head_timeout
        self.clients: set[ClientConnection] = set()
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
        """Coarse monotonic time (loop.time() as of the last sweep), for deadlines only."""
        self.draining = False
        self.server: asyncio.AbstractServer | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- routing state ------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        return self.state.table

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
                    st = self.upstreams[u] = UpstreamState(u)
                states.append(st)
            routes[name] = TrackRoute(name, states, self._metrics(name))
        return RouteState(table, routes)

    def swap(self, table: RoutingTable) -> None:
        """Serve `table` from the next request on; in-flight requests finish where they are
        (and count where they started). A track that now serves another release counts
        from zero: its counters and seconds belonged to the one before."""
        for track, release in table.releases.items():
            if self.track_releases.get(track, release) != release:
                self.track_metrics[track] = TrackMetrics()
            self.track_releases[track] = release
        self.state = self._compile(table)
        self.has_table = True
        live = {u for ups in table.tracks.values() for u in ups}
        for u in [u for u in self.upstreams if u not in live]:
            self.upstreams.pop(u).retire()
        log.info("serving table version %d (weights %s)", table.version,
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

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Bind and accept; raises OSError when the address cannot be used."""
        self.loop = loop = asyncio.get_running_loop()
        self.clock = loop.time()
        self.server = await loop.create_server(lambda: ClientConnection(self), host, port,
                                               reuse_address=True, backlog=4096)
        self.sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Enforce every timeout from one periodic pass instead of one timer per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.clock = loop.time()
            for c in list(self.clients):
                c.check_deadlines(now)
            for st in self.upstreams.values():
                st.expire_idle(now)

    async def shutdown(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), close the rest."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for c in list(self.clients):
            c.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.clients):
            c.abort()
        for st in self.upstreams.values():
            st.retire()
        if self.sweeper is not None:
            self.sweeper.cancel()


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port); ValueError with a readable message."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port_s)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    control_path = os.path.abspath(args.control)
    table_path = Path(args.table)
    try:
        await claim_socket(Path(control_path))
    except RouterError as e:
        print(f"control socket: {e.message}", file=sys.stderr)
        return 1
    server = ProxyServer(args.service, args.listen, load_table(table_path, args.service),
                         response_timeout=args.response_timeout)
    try:
        await server.start(host, port)
    except OSError as e:
        reason = os.strerror(e.errno).lower() if e.errno else str(e)
        print(f"listen {args.listen}: {reason}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    control = ControlService(server, table_path, stop.set)
    try:
        ctl = await serve_control(Path(control_path), control)
    except OSError as e:
        print(f"control socket {control_path}: {e.strerror or e}", file=sys.stderr)
        await server.shutdown(0)
        return 1
    inode = os.stat(control_path).st_ino
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("router for %s listening on %s (table version %d, control %s)", args.service, args.listen,
             server.table.version, control_path)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (up to %gs)", DRAIN_TIMEOUT)
    ctl.close()
    remove_socket(Path(control_path), inode)
    await server.shutdown()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shipyard.router.proxy",
                                description="shipyard's embedded router (data plane) for one service")
    p.add_argument("--service", required=True)
    p.add_argument("--listen", required=True, help="HOST:PORT to accept the service's traffic on")
    p.add_argument("--control", required=True, help="path of the unix control socket")
    p.add_argument("--table", required=True, help="where the served table is persisted")
    p.add_argument("--response-timeout", type=float, default=60.0,
                   help="seconds an instance may stay silent before the client gets a 504")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s router[%(process)d] %(levelname)s %(message)s")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
