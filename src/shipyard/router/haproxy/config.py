"""haproxy.cfg for a set of services.

The configuration holds only what cannot change at runtime (listen addresses, the sticky
key's header and cookie names, one backend per track, timeouts); everything a rollout
changes lives in three maps per service that the Runtime API swaps (maps.py) and in dynamic
servers (`add server`). The frontend's rules (rules.py) pick each request's track from them.
A failed connect is retried on another server of the track (`option redispatch`); a request
whose instance closed without answering is retried as rules.py says.
Pure functions: rendered text is compared, so an unchanged set of services never reloads."""

from __future__ import annotations

import re
from collections.abc import Sequence

from shipyard.errors import RouterError
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.rules import (
    PREVIEW_ACL,
    backend_rules,
    check_names,
    forward_rules,
    rule_text,
    track_rules,
)
from shipyard.router.haproxy.services import Server, ServiceConfig, backend_name

_TRACK = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
"""What the traffic log (log_lines.py) reads back out of `<service>__<track>`: a slot-like name."""


def render(services: Sequence[ServiceConfig], files: Files, log_format: str, start_rule: str = "") -> str:
    """The whole haproxy.cfg. `log_format` and `start_rule` (a first http-request rule that
    stamps the request's arrival) are the traffic log's (log_lines.py). RouterError naming the
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


def frontend_head(name: str, bind: str, site: str, log_format: str, start_rule: str) -> list[str]:
    return [
        f"frontend {name}",
        f"    bind {bind}",
        f"    log ring@{ring_name(site)} local0 info",
        f"    log-format \"{_escape(log_format)}\"",
        "    option forwardfor",
        *([f"    {start_rule}"] if start_rule else []),
    ]


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
