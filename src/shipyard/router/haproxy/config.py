"""haproxy.cfg for a set of services, and the map files that carry their routing tables.

The configuration holds only what cannot change at runtime (listen addresses, the sticky
key's header and cookie names, one backend per track, timeouts); everything a rollout
changes lives in three maps per service that the Runtime API swaps atomically
(`prepare map` / `add map @v` / `commit map @v`) and in dynamic servers (`add server`):

- `<service>.buckets.map` (map_int): "first:last" bucket range -> track, so a request's track
  is the one owning its user's bucket, exactly RoutingTable.track_at;
- `<service>.tracks.map` (map_str): track or alias -> track, for X-Shipyard-Track;
- `<service>.token.map` (map_str): "token" -> the preview token, compared in constant time
  (secure_memcmp) with X-Shipyard-Preview-Token; no entry: overrides are off.

The user key is the first sticky header, else the sticky cookie, else the client address (as
text, like the embedded router's), hashed with `crc32,mod(10000)` = table.user_bucket; no key:
`rand(10000)`. Every client X-Shipyard-* header is deleted before the request is forwarded.
A failed connect is retried on another server of the track (`option redispatch`); a request
whose instance closed without answering is retried too if it is idempotent, or if it was not
the first of its client connection: HAProxy (`http-reuse safe`) sends a first request only
over a new connection to the instance, and a later one may meet a kept-alive connection the
instance closes as it arrives (HAProxy would close the client's connection instead, leaving
the retry to the client); the embedded router replays that one too. The rule cannot see whether
the connection was reused, so a later POST whose instance died while serving it on a new
connection is replayed as well, where the embedded router answers 502.
Pure functions: rendered text is compared, so an unchanged set of services never reloads."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.errors import RouterError
from shipyard.router.table import BUCKETS, RoutingTable, Upstream

SLOTS = ("blue", "green", "baseline")
"""Tracks every service has a backend for (the daemon's slots, a canary's baseline too), so a new
slot needs no reload."""

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_TRACK = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
"""What the traffic log (logs.py) reads back out of `<service>__<track>`: a slot-like name."""
_SERVICE = re.compile(r"^[a-z0-9-]+$")


@dataclass(frozen=True)
class Files:
    """Where one HAProxy keeps its sockets and state (all under one directory)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.root / "master.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def state_file(self) -> Path:
        return self.root / "servers.state"

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    def map_file(self, service: str, kind: str) -> Path:
        return self.maps / f"{service}.{kind}.map"

    def log_socket(self, service: str) -> Path:
        return self.root / f"{service}.log.sock"

    def cert_file(self, service: str) -> Path:
        """The service's certificate chain and key in one PEM (0600), as `crt` loads it and as
        `set ssl cert` names it: the name stays when the certificate is rotated."""
        return self.root / "tls" / f"{service}.pem"


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


def bucket_entries(table: RoutingTable) -> list[tuple[str, str]]:
    """`first:last` (inclusive) -> track, for every track with users."""
    return [(f"{first}:{end - 1}", name) for name, first, end in table.bucket_ranges()]


def track_entries(table: RoutingTable) -> list[tuple[str, str]]:
    return [*((t, t) for t in sorted(table.tracks)), *sorted(table.aliases.items())]


def token_entries(table: RoutingTable) -> list[tuple[str, str]]:
    return [("token", table.preview_token)] if table.preview_token else []


MAP_KINDS = ("tracks", "token", "buckets")
"""In the order they are committed: the bucket map, which moves users, last."""


def map_entries(table: RoutingTable) -> dict[str, list[tuple[str, str]]]:
    return {"tracks": track_entries(table), "token": token_entries(table), "buckets": bucket_entries(table)}


def map_text(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{k} {v}\n" for k, v in entries)


def render(services: Sequence[ServiceConfig], files: Files, log_format: str, start_rule: str = "") -> str:
    """The whole haproxy.cfg. `log_format` and `start_rule` (a first http-request rule that
    stamps the request's arrival) are the traffic log's (logs.py). RouterError naming the
    field for a name HAProxy cannot take."""
    out = [
        "# written by shipyard: traffic changes go through the Runtime API, not this file",
        "global",
        "    master-worker",
        f"    stats socket {files.admin_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    server-state-file {files.state_file}",
        f"    pidfile {files.pid_file}",
        "    hard-stop-after 30s",
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    option idle-close-on-response",
        "    option dontlognull",
        "    timeout connect 5s",
        "    timeout client 300s",
        "    timeout server 300s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 75s",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "    load-server-state-from-file global",
        "",
    ]
    for svc in sorted(services, key=lambda s: s.service):
        out += _ring(svc, files)
    for svc in sorted(services, key=lambda s: s.service):
        out += _frontend(svc, files, log_format, start_rule)
        for track in svc.tracks:
            out += _backend(svc, track)
    return "\n".join(out) + "\n"


RING_SIZE = 1 << 20
"""Bytes of log lines a service's ring holds while its reader is slow or away (~10,000 lines)."""


def ring_name(site: str) -> str:
    return f"sylog-{site}"


def _ring(svc: ServiceConfig, files: Files) -> list[str]:
    return ring_lines(svc.service, files)


def ring_lines(site: str, files: Files) -> list[str]:
    """The log ring of a frontend (`site`: its service, or its shared listen): workers append
    each request's line in memory and the ring's forwarder streams them to the daemon's reader
    (logs.py start_stream). A datagram per request would be dropped whenever the socket's queue
    of 10 is full, as under load. `format raw`: the line alone, no syslog header per line
    (logs.py reads none of it)."""
    return [f"ring {ring_name(site)}",
            "    format raw",
            "    maxlen 1200",
            f"    size {RING_SIZE}",
            "    timeout connect 1s",
            "    timeout server 10s",
            f"    server reader unix@{files.log_socket(site)}",
            ""]


Rule = tuple[str, str, str]
"""(rule, "if" / "unless" / "", condition): a frontend rule of one service, so a frontend
shared by several (sites.py) can add "this request is for that service" to its condition."""


def check_names(svc: ServiceConfig) -> None:
    s = svc.service
    if not _SERVICE.match(s):
        raise RouterError(f"service name {s!r} cannot name a HAProxy frontend", "use [a-z0-9-] only")
    for what, name in (("sticky header", svc.sticky_header), ("sticky cookie", svc.sticky_cookie)):
        if name is not None and not _TOKEN.match(name):
            raise RouterError(f"{what} {name!r} of {s} is not a plain HTTP token",
                              "use letters, digits and - _ . in the spec's sticky names")


def frontend_head(name: str, bind: str, site: str, log_format: str, start_rule: str) -> list[str]:
    return [
        f"frontend {name}",
        f"    bind {bind}",
        f"    log ring@{ring_name(site)} local0 info",
        f"    log-format \"{_escape(log_format)}\"",
        "    option forwardfor",
        *([f"    {start_rule}"] if start_rule else []),
    ]


PREVIEW_ACL = "acl sy_preview req.fhdr(x-shipyard-preview-token),secure_memcmp(txn.sy_tok)"


def track_rules(svc: ServiceConfig, files: Files) -> list[Rule]:
    """The service's track for a request: an override with the preview token, else the bucket
    of its user key (sticky header, cookie, client address), else a random bucket."""
    maps = {k: files.map_file(svc.service, k) for k in MAP_KINDS}
    rules: list[Rule] = [
        (f"http-request set-var(txn.sy_tok) str(token),map_str({maps['token']})", "if",
         "{ req.fhdr(x-shipyard-preview-token) -m found }"),
        (f"http-request set-var(txn.sy_track) req.fhdr(x-shipyard-track),map_str({maps['tracks']})", "if",
         "sy_preview"),
    ]
    no_key = "!{ var(txn.sy_key) -m found }"
    no_track = "{ var(txn.sy_track) -m found }"
    buckets = f"map_int({maps['buckets']})"
    if svc.sticky_header:
        h = svc.sticky_header.lower()
        rules.append((f"http-request set-var(txn.sy_key) req.fhdr({h},1)", "if", f"{{ req.fhdr({h},1) -m len gt 0 }}"))
    if svc.sticky_cookie:
        c = svc.sticky_cookie
        rules.append((f"http-request set-var(txn.sy_key) req.cook({c})", "if", f"{no_key} {{ req.cook({c}) -m len gt 0 }}"))
    if svc.sticky_client_address:
        rules.append(("http-request set-var-fmt(txn.sy_key) \"%[src]\"", "if", no_key))
    if len(rules) == 2:    # no user key: every request's bucket is random
        return [*rules, (f"http-request set-var(txn.sy_track) rand({BUCKETS}),{buckets}", "unless", no_track)]
    return [
        *rules,
        (f"http-request set-var(txn.sy_track) var(txn.sy_key),crc32,mod({BUCKETS}),{buckets}", "if",
         f"{{ var(txn.sy_key) -m found }} !{no_track}"),
        (f"http-request set-var(txn.sy_track) rand({BUCKETS}),{buckets}", "if", f"{no_key} !{no_track}"),
    ]


def forward_rules(tls: bool) -> list[str]:
    """What every request gets before it is forwarded, whichever service it is for."""
    return [
        "http-request del-header x-shipyard- -m beg",
        "http-request del-header proxy- -m beg",
        "http-request del-header keep-alive",
        "http-request del-header te",
        f"http-request set-header x-forwarded-proto {'https' if tls else 'http'}",
        "http-request set-header x-forwarded-host %[req.hdr(host)] if { req.hdr(host) -m found }",
        ("http-request disable-l7-retry if { http_first_req } !METH_GET !METH_HEAD !METH_OPTIONS "
         "!{ method PUT DELETE TRACE }"),
    ]


def backend_rules(svc: ServiceConfig) -> list[Rule]:
    s = svc.service
    return [
        (f"http-request return status 503 content-type text/plain string \"shipyard: service {s} has no live "
         "release\\n\" hdr x-shipyard-error 1", "unless", "{ var(txn.sy_track) -m found }"),
        (f"use_backend {s}__%[var(txn.sy_track)]", "", ""),   # a request without a track got the 503
    ]


def rule_text(rule: Rule, acl: str | None = None) -> str:
    """The rule as written alone (`acl` None), or only for requests matching `acl`."""
    text, kind, cond = rule
    if acl is None:
        return f"{text} {kind} {cond}" if kind else text
    if kind == "unless":
        if cond.count("{") > 1 or not cond.startswith("{"):
            raise ValueError(f"cannot negate a compound condition: {cond}")
        return f"{text} if {acl} !{cond}"
    return f"{text} if {acl} {cond}" if kind else f"{text} if {acl}"


def _frontend(svc: ServiceConfig, files: Files, log_format: str, start_rule: str) -> list[str]:
    """The frontend of a service alone on its listen address: every Host is its."""
    check_names(svc)
    s = svc.service
    rules = track_rules(svc, files)
    return [
        *frontend_head(s, f"{bind_address(svc.listen)}{tls_bind(svc, files)}", s, log_format, start_rule),
        f"    {rule_text(rules[0])}",
        f"    {PREVIEW_ACL}",
        *(f"    {rule_text(r)}" for r in rules[1:]),
        *(f"    {r}" for r in forward_rules(bool(svc.tls))),
        *(f"    {rule_text(r)}" for r in backend_rules(svc)),
        "",
    ]


TLS_BIND = "alpn http/1.1 ssl-min-ver TLSv1.2"
"""As the embedded router's listener: HTTP/1.1 only (ALPN), TLS 1.2 and later."""


def tls_bind(svc: ServiceConfig, files: Files) -> str:
    """The bind line's TLS words (empty without TLS)."""
    return f" ssl crt {files.cert_file(svc.service)} {TLS_BIND}" if svc.tls else ""


def _backend(svc: ServiceConfig, track: str) -> list[str]:
    if not _TRACK.match(track):
        raise RouterError(f"track name {track!r} of {svc.service} cannot name a HAProxy backend",
                          "use lowercase letters, digits and - in track names (like blue, green)")
    lines = [f"backend {backend_name(svc.service, track)}",
             "    balance roundrobin",
             f"    timeout queue {max(1, round(svc.queue_timeout * 1000))}ms"]
    for srv in svc.servers.get(track, ()):
        lines.append(f"    {server_line(srv, svc.max_conns)}")
    return [*lines, ""]


SERVER_POOL = "pool-max-conn -1 pool-purge-delay 5s"
"""Idle connections to the instance are kept for reuse by later requests. These are HAProxy's
defaults for a server of the file, but a server made by `add server` (HAProxy 2.6) starts with
a pool of 0 and a purge delay of 0: every request then connects to the instance and closes the
connection after its response (one connect() + close() per request, ~25 µs of HAProxy CPU in
benchmarks/haproxy_variants.py), until the next reload turns the servers into file servers."""


def server_line(srv: Server, max_conns: int) -> str:
    """The server's arguments, the same in the file and in `add server`."""
    return f"server {srv.name} {host_port(srv.address, srv.port)} maxconn {max_conns} {SERVER_POOL}"


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def bind_address(listen: str) -> str:
    """`HOST:PORT` as a bind line takes it (`[::1]:80` -> `ipv6@::1:80`)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise RouterError(f"listen address {listen!r} is not HOST:PORT", "write it like 127.0.0.1:8080")
    if host.startswith("["):
        return f"ipv6@{host.strip('[]')}:{int(port)}"
    return f"{host}:{int(port)}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
