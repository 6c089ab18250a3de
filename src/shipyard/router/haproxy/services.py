"""One service as HAProxy's configuration sees it (ServiceConfig: what only a reload can
change), where it is reached (Edge), its servers, and the names they get in the configuration."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from shipyard.router.table import RoutingTable, Upstream

SLOTS = ("blue", "green", "baseline")
"""Tracks every service has a backend for (the daemon's slots, a canary's baseline too), so a new
slot needs no reload."""


@dataclass(frozen=True)
class Edge:
    """Where a service is reached: what `ensure` was given (normalised). Persisted."""

    listen: str
    redirect_http: str | None = None
    domains: tuple[str, ...] = ()
    """Host names (exact, `*.` wildcards) routed to the service on a listen it may share; ()
    : every Host, and the listen is its alone."""

    def to_json(self) -> dict[str, object]:
        return {"listen": self.listen, "redirect_http": self.redirect_http, "domains": list(self.domains)}

    @classmethod
    def from_json(cls, doc: object) -> Edge:
        """A record, or the plain listen string of a router from before TLS."""
        if isinstance(doc, str):
            return cls(doc)
        if not isinstance(doc, dict) or not isinstance(doc.get("listen"), str):
            raise ValueError(f"not an edge record: {doc!r}")
        redirect = doc.get("redirect_http")
        return cls(doc["listen"], str(redirect) if redirect else None, tuple(str(d) for d in doc.get("domains") or ()))


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    port: int


@dataclass(frozen=True)
class ServiceConfig:
    """One service as the configuration sees it. `shape` is what only a reload can change."""

    service: str
    listen: str
    tracks: tuple[str, ...] = SLOTS
    sticky_header: str | None = None
    sticky_cookie: str | None = None
    sticky_client_address: bool = False
    max_conns: int = 64
    queue_timeout: float = 5.0
    tls: bool | None = None
    """Terminate TLS on `listen` with Files.cert_file(service) (the table has a certificate);
    None: no table yet (nothing served, so nothing to clash with on a shared listen)."""
    redirect_http: str | None = None
    """A plain-HTTP listener answering 308 to the https side (tls.redirect_http)."""
    domains: tuple[str, ...] = ()
    """Edge.domains: with some, the service is routed by Host on a frontend of its listen
    (sites.py), whose host maps hold them (not the configuration: a change needs no reload)."""
    servers: dict[str, tuple[Server, ...]] = field(default_factory=dict, compare=False)
    """Per track, the servers at the time of rendering (a restart starts with them)."""

    @property
    def shape(self) -> tuple[object, ...]:
        return (self.service, self.listen, self.tracks, self.sticky_header, self.sticky_cookie,
                self.sticky_client_address, self.max_conns, self.queue_timeout, bool(self.tls), self.redirect_http,
                bool(self.domains))


def backend_name(service: str, track: str) -> str:
    """`<service>__<track>`: what the traffic log maps back to a track."""
    return f"{service}__{track}"


def server_name(up: Upstream) -> str:
    """A server name HAProxy accepts, unique per (id, host, port): the same instance keeps it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", up.id)[:48]
    return f"{safe}-{zlib.crc32(f'{up.id}|{up.host}|{up.port}'.encode()):08x}"


def service_config(listen: str, table: RoutingTable, servers: dict[str, tuple[Server, ...]],
                   redirect_http: str | None = None, domains: tuple[str, ...] = ()) -> ServiceConfig:
    """The configuration a table needs (its tracks beyond the slots get backends too)."""
    tracks = tuple(dict.fromkeys((*SLOTS, *sorted(table.tracks))))
    return ServiceConfig(table.service, listen, tracks, table.sticky_header, table.sticky_cookie,
                         table.sticky_client_address, table.max_conns_per_instance, table.queue_timeout,
                         table.tls is not None, redirect_http, domains, servers)
