"""One listen address of the embedded router: its sockets, its client connections, and the
services it serves (each a ServicePlane, service_plane.py).

A request goes to the plane its host names (hosts.py), and a listener with one service that
names no domains sends everything there, as before there were domains. An unknown host is
answered 404, counted apart from every service's tracks.

A table swap replaces one reference. Requests already sent finish on their
instance; the next request of a keep-alive connection sees the new table; a swap
never closes a client connection (the failure mode of nginx/Caddy reloads). Requests
waiting in a track's queue are not yet anywhere: a swap routes them by the new table.
With certificates in the tables the listener terminates TLS (tls.py), each service's chosen
by SNI; a new certificate is a swap too, served from the next handshake on."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from shipyard.router.dataplane.acceptor import Listener, bind
from shipyard.router.dataplane.client import ClientConnection
from shipyard.router.dataplane.hosts import HostMap, host_name
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.outbox import Outbox
from shipyard.router.dataplane.redirect import RedirectConnection
from shipyard.router.dataplane.service_plane import ServicePlane
from shipyard.router.dataplane.tls import HANDSHAKE_TIMEOUT, SniFront
from shipyard.router.dataplane.tries import TryWatch
from shipyard.router.table import RoutingTable

log = logging.getLogger("shipyard.router")

SWEEP_INTERVAL = 1.0
DRAIN_TIMEOUT = 10.0


class ProxyServer:
    """One listen address: its sockets, client connections, and the services it serves."""

    def __init__(self, service: str | None, listen: str, table: RoutingTable | None = None,
                 response_timeout: float = 60.0, client_idle_timeout: float = 75.0,
                 client_head_timeout: float = 30.0, redirect: str | None = None,
                 domains: Sequence[str] = ()) -> None:
        self.listen = listen
        self.redirect = redirect
        """The plain-HTTP address answering 308 to https (tls.redirect_http), if any."""
        self.response_timeout = response_timeout
        self.client_idle_timeout = client_idle_timeout
        self.client_head_timeout = client_head_timeout
        self.planes: dict[str, ServicePlane] = {}
        self.hosts: HostMap[ServicePlane] = HostMap()
        self.unrouted = TrackMetrics()
        """Requests for a host no service here names (answered 404): no service's track."""
        self.sni = SniFront(self._certificate_for)
        self.clients: set[ClientConnection] = set()
        self.started = time.time()
        self.clock = 0.0
        """Coarse monotonic time (loop.time() as of the last sweep), for deadlines only."""
        self.draining = False
        self.workers = 1
        """Router processes on the address (router.workers): each plane enforces its share of the limits."""
        self.retire_grace = 0.0
        """Set when the daemon retires this worker (fewer workers): see shutdown."""
        self.servers: list[Listener] = []
        self.listen_socks: list[socket.socket] = []
        """The listening sockets (the daemon's, handed over); each Listener accepts on a dup."""
        self.redirect_servers: list[Listener] = []
        self.redirect_socks: list[socket.socket] = []
        self.sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tries: TryWatch = None  # type: ignore[assignment]  # made by start(), with the loop
        self.outbox: Outbox | None = None
        """Writes held to the end of the loop iteration (outbox.py); made by start(), with the loop."""
        if service is not None:
            self.add(service, domains, table)

    # -- services -----------------------------------------------------------------------

    def refusal(self, service: str, domains: Sequence[str]) -> str | None:
        """Why `service` cannot be served here with `domains` (None: it can); changes nothing."""
        others = [p for name, p in self.planes.items() if name != service]
        if not others:
            return None
        if not domains:
            return (f"{self.listen} also serves {', '.join(sorted(p.service for p in others))}: a service "
                    "sharing an address must name its domains")
        for p in others:
            if not p.domains:
                return f"{self.listen} is taken by {p.service}, which names no domains"
            both = [d for d in domains if d in p.domains]
            if both:
                return f"{', '.join(both)} already routed to {p.service} on {self.listen}"
        return None

    def add(self, service: str, domains: Sequence[str], table: RoutingTable | None) -> ServicePlane:
        """Serve `service` for `domains` (again: its domains change, its table stays). ValueError
        when another service here claims a name or takes every host; TableError when `table`'s
        certificate cannot be served."""
        problem = self.refusal(service, domains)
        if problem is not None:
            raise ValueError(problem)
        plane = self.planes.get(service)
        if plane is None:
            plane = ServicePlane(service, self.listen, table, tuple(domains), self.response_timeout, self.redirect,
                                 self.workers)
            plane.loop, plane.tries, plane.clock = self.loop, self.tries, self.clock
            self.planes[service] = plane
        else:
            plane.domains = tuple(domains)
        self._map()
        log.info("serving %s for %s", service, ", ".join(domains) if domains else "every host")
        return plane

    def remove(self, service: str) -> None:
        """Stop routing to `service`: its hosts get 404 from the next request; requests in
        flight finish on their instances."""
        plane = self.planes.pop(service, None)
        if plane is not None:
            self._map()
            plane.retire()
            log.info("no longer serving %s", service)

    def _map(self) -> None:
        self.hosts = HostMap((p.domains, p) for p in self.planes.values())

    def default_plane(self) -> ServicePlane | None:
        """The service whose certificate a handshake without a known server name gets: the
        first by name among those with a certificate."""
        for name in sorted(self.planes):
            if self.planes[name].tls_context is not None:
                return self.planes[name]
        return None

    def _certificate_for(self, server_name: str | None) -> ssl.SSLContext | None:
        plane = self.hosts.lookup(host_name(server_name)) if server_name else None
        if plane is None or plane.tls_context is None:
            plane = self.default_plane()
        return plane.tls_context if plane is not None else None

    async def settled(self) -> None:
        """The listeners speak what the last swap asked for (TLS or plain) from the next accept
        (`_accept_options`): nothing to wait for."""

    def stats(self) -> dict[str, Any]:
        """What the listener counts itself (beside each service's stats)."""
        return {"listen": self.listen, "services": sorted(self.planes),
                "unknown_host": {"requests": self.unrouted.requests,
                                 "status": self.unrouted.snapshot()["status"]}}

    def listen_fds(self) -> list[int]:
        """The listening sockets' fds, for a daemon that needs its copy back (control_server)."""
        if self.draining:
            return []
        return [sock.fileno() for sock in self.listen_socks]

    def share(self, workers: int) -> None:
        """The address now has `workers` router processes: each plane enforces its share."""
        self.workers = workers
        for plane in self.planes.values():
            plane.share(workers)

    def accept_on(self, socks: list[socket.socket]) -> None:
        """Also accept on `socks` (a departing worker's, handed over by the daemon before it goes)."""
        assert self.loop is not None
        for s in socks:
            self.listen_socks.append(s)
            self.servers.append(Listener(self.loop, s.dup(), lambda: ClientConnection(self), self._accept_options))

    def stop_accepting(self, inodes: set[int]) -> int:
        """Stop accepting on the listening sockets with these inodes (a new worker accepts on them
        now; the daemon keeps its copy, so nothing queued there is lost). How many were."""
        socks: list[socket.socket] = []
        servers: list[Listener] = []
        for s, srv in zip(self.listen_socks, self.servers, strict=True):
            if os.fstat(s.fileno()).st_ino in inodes:
                srv.close()
                s.close()
            else:
                socks.append(s)
                servers.append(srv)
        dropped = len(self.listen_socks) - len(socks)
        self.listen_socks, self.servers = socks, servers
        return dropped

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
        self.outbox = Outbox(loop)
        for plane in self.planes.values():
            plane.loop, plane.tries, plane.clock = loop, self.tries, self.clock
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
        """TLS for a connection accepted now when a service here has a certificate: decided per
        connection, so turning TLS on or off takes effect from the next accept and no open
        connection (nor the listening socket) is touched."""
        for plane in self.planes.values():
            if plane.tls_context is not None:
                return {"ssl": self.sni.front, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
        return {}

    async def _sweep(self) -> None:
        """Enforce every timeout from one periodic pass instead of one timer per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.clock = loop.time()
            for plane in self.planes.values():
                plane.expire_idle(now)
            for c in list(self.clients):
                c.check_deadlines(now)

    async def shutdown(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), close the rest.
        A worker retired (`retire_grace`) first answers each connection's next request with
        `Connection: close` for that long, so busy keep-alive clients move to another worker
        without racing a close of their idle connection."""
        loop = asyncio.get_running_loop()
        if self.retire_grace:
            for srv in self.servers + self.redirect_servers:
                srv.close()
            end = loop.time() + self.retire_grace
            while self.clients and loop.time() < end:
                for c in list(self.clients):
                    c.draining = True
                await asyncio.sleep(0.02)
        self.draining = True
        for srv in self.servers + self.redirect_servers:
            srv.close()
        for c in list(self.clients):
            c.drain()
        deadline = loop.time() + timeout
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.clients):
            c.abort()
        for plane in self.planes.values():
            plane.retire()
        self.tries.close()
        if self.sweeper is not None:
            self.sweeper.cancel()


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port); ValueError with a readable message."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port_s)
