"""The embedded data plane: an HTTP/1.1 reverse proxy serving one service's routing table.

Run as its own process (`python -m shipyard.router.dataplane.proxy --service shop --listen
127.0.0.1:8080 --control S --table T`) so it keeps serving its last table when the
daemon dies. It is built on asyncio Protocols + httptools (uvloop when present)
because every request of the service crosses it: no per-request task, no timer
per request (one sweeper checks deadlines), no copy of bodies beyond one chunk.

A table swap replaces one reference. Requests already sent finish on their
instance; the next request of a keep-alive connection sees the new table; a swap
never closes a client connection (the failure mode of nginx/Caddy reloads). Requests
waiting in a track's queue are not yet anywhere: a swap routes them by the new table.
With `tls` in the table the listener terminates TLS (tls.py); a new certificate is a swap
too, served from the next handshake on. `--redirect` adds a plain-HTTP listener answering
308 to https (redirect.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.dataplane.acceptor import Listener, bind
from shipyard.router.dataplane.client import ClientConnection
from shipyard.router.dataplane.control_server import (
    ControlService,
    claim_socket,
    load_table,
    remove_socket,
    serve_control,
)
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.redirect import RedirectConnection
from shipyard.router.dataplane.routes import FULL, RouteState, TrackRoute
from shipyard.router.dataplane.tls import HANDSHAKE_TIMEOUT, TlsTerminator
from shipyard.router.dataplane.tries import TryWatch
from shipyard.router.dataplane.upstream import UpstreamState
from shipyard.router.table import RoutingTable, TableError, Upstream

log = logging.getLogger("shipyard.router")

NO_TRACK = "(none)"
"""Metrics key for requests that found no track (503: no live release)."""
SWEEP_INTERVAL = 1.0
DRAIN_TIMEOUT = 10.0


class ProxyServer:
    """The data plane of one service: listener, routing state, upstream pools, metrics."""

    def __init__(self, service: str, listen: str, table: RoutingTable | None = None,
                 response_timeout: float = 60.0, client_idle_timeout: float = 75.0,
                 client_head_timeout: float = 30.0, redirect: str | None = None) -> None:
        self.service = service
        self.listen = listen
        self.redirect = redirect
        """The plain-HTTP address answering 308 to https (tls.redirect_http), if any."""
        self.tls = TlsTerminator()
        if table is not None:   # a certificate that cannot be served stops the start (TableError)
            self.tls.serve(table.tls, self.tls.prepare(table.tls))
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
        self.servers: list[Listener] = []
        self.listen_socks: list[socket.socket] = []
        """The listening sockets (the daemon's, handed over); each Listener accepts on a dup."""
        self.redirect_servers: list[Listener] = []
        self.redirect_socks: list[socket.socket] = []
        self.sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tries: TryWatch = None  # type: ignore[assignment]  # made by start(), with the loop
        self.pumping = False

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
                    st = self.upstreams[u] = UpstreamState(u, self.pump)
                states.append(st)
            routes[name] = TrackRoute(name, states, self._metrics(name), table.max_conns_per_instance,
                                      table.queue_size, table.queue_timeout)
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

    def check(self, table: RoutingTable) -> None:
        """TableError if `table`'s certificate cannot be served (control_server asks first)."""
        self.tls.prepare(table.tls)

    async def settled(self) -> None:
        """The listeners speak what the last swap asked for (TLS or plain) from the next accept
        (`_accept_options`), so a client that connects after the daemon was told "served"
        never meets the old protocol: nothing to wait for."""

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
            log.info("serving certificate %s to new connections", table.tls.fingerprint)  # type: ignore[union-attr]
        waiting = sorted((ex for r in old.routes.values() for ex in r.waiting.take_all()),
                         key=lambda ex: ex.queued_at)
        for ex in waiting:
            ex.reroute(self.state)  # type: ignore[attr-defined]
        live = {u for ups in table.tracks.values() for u in ups}
        for u in [u for u in self.upstreams if u not in live]:
            self.upstreams.pop(u).retire()
        self.pump()  # new instances may have room for requests that waited
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
            "limits": {k: getattr(self.table, k) for k in
                       ("max_conns_per_instance", "queue_size", "queue_timeout", "per_try_timeout")},
            "tls": {"fingerprint": self.tls.fingerprint, "rotations": self.tls.rotations,
                    "redirect_http": self.redirect} if self.tls.fingerprint else None,
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

    def listen_fds(self) -> list[int]:
        """The listening sockets' fds, for a daemon that needs its copy back (control_server)."""
        if self.draining:
            return []
        return [sock.fileno() for sock in self.listen_socks]

    def redirect_fds(self) -> list[int]:
        """The redirect listener's sockets' fds, for a daemon taking its copy back."""
        if self.draining:
            return []
        return [sock.fileno() for sock in self.redirect_socks]

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int, socks: list[socket.socket] | None = None,
                    redirect_socks: list[socket.socket] | None = None) -> None:
        """Accept on `socks` (listening sockets handed over by the daemon, which keeps its own
        copies so the port stays open while no router runs), else bind `host`:`port`;
        `redirect_socks` likewise for the redirect listener. Raises OSError when the address
        cannot be used."""
        self.loop = loop = asyncio.get_running_loop()
        self.clock = loop.time()
        self.tries = TryWatch(loop)
        # not loop.create_server: uvloop's accepts one connection per loop iteration (acceptor.py)
        self.listen_socks = list(socks or bind(host, port))
        self.servers = [Listener(loop, s.dup(), lambda: ClientConnection(self), self._accept_options)
                        for s in self.listen_socks]
        self.redirect_socks = list(redirect_socks or [])
        if redirect_socks:
            https_port = parse_listen(self.listen)[1]
            self.redirect_servers = [Listener(loop, s.dup(), lambda: RedirectConnection(https_port, loop))
                                     for s in redirect_socks]
        self.sweeper = loop.create_task(self._sweep())

    def _accept_options(self) -> dict[str, Any]:
        """TLS for a connection accepted now when the table being served has a certificate:
        decided per connection, so turning TLS on or off takes effect from the next accept and
        no open connection (nor the listening socket) is touched."""
        if self.tls.current is None:
            return {}
        return {"ssl": self.tls.front, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}

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
        for srv in self.servers + self.redirect_servers:
            srv.close()
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
        self.tries.close()
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
    try:
        server = ProxyServer(args.service, args.listen, load_table(table_path, args.service),
                             response_timeout=args.response_timeout, redirect=args.redirect or None)
    except TableError as e:
        print(f"table {table_path}: {e}", file=sys.stderr)
        return 1
    try:
        socks = [socket.socket(fileno=int(fd)) for fd in args.listen_fds.split(",") if fd] if args.listen_fds else None
        redirect_socks = [socket.socket(fileno=int(fd)) for fd in args.redirect_fds.split(",") if fd]
        if args.redirect and not redirect_socks:
            redirect_socks = bind(*parse_listen(args.redirect))
        await server.start(host, port, socks, redirect_socks)
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
    p = argparse.ArgumentParser(prog="python -m shipyard.router.dataplane.proxy",
                                description="shipyard's embedded router (data plane) for one service")
    p.add_argument("--service", required=True)
    p.add_argument("--listen", required=True, help="HOST:PORT to accept the service's traffic on")
    p.add_argument("--listen-fds", default="",
                   help="comma-separated inherited fds of sockets already listening on --listen (from the daemon)")
    p.add_argument("--redirect", default="", help="HOST:PORT of a plain-HTTP listener answering 308 to https")
    p.add_argument("--redirect-fds", default="",
                   help="comma-separated inherited fds of sockets already listening on --redirect (from the daemon)")
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
