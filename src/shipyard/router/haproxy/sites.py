"""Frontends by listen address: a service alone on its address, or several sharing one by Host.

A service that names no domains has its listen address alone (config.py's frontend: every
Host is its, as before domains existed). Services that name domains share one frontend
per address, `listen-<address>`: the request's Host (lowercased, port and a trailing dot cut
off) is looked up in two map files of that frontend, `<site>.hosts.map` (map_str: exact
names) then `<site>.wild.map` (map_end: `.example.test` for `*.example.test`, longest first,
so the longest wildcard suffix wins and `example.test` itself is not matched); no service:
404 with a plain-text body naming the address and the host (as the embedded router's). Then the service's own rules (rules.py
track_rules, each guarded by "this request is for that service") and its backends, exactly
as alone. The domains live in the maps, so changing them is a map swap; adding or removing a
service changes the frontend's rules, a reload. With TLS the bind line carries every
service's certificate (`crt` each) and HAProxy picks one by SNI (a client sending no or an
unknown name gets the first, by service name). One ring and one traffic log per frontend.

`tls.redirect_http` listeners are one frontend per address, which services of one listen
address may share (the redirect does not depend on the service)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from shipyard.errors import RouterError
from shipyard.router.haproxy import config as cfg
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.log_lines import SHARED_SITE
from shipyard.router.haproxy.rules import (
    PREVIEW_ACL,
    backend_rules,
    check_names,
    forward_rules,
    rule_text,
    track_rules,
)
from shipyard.router.haproxy.services import ServiceConfig

_DOMAIN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

PLAIN = 'content-type "text/plain; charset=utf-8"'
SHOWN_HOST = 200
"""Bytes of an unknown host quoted back in the 404 body (HAProxy has already refused a Host
with control characters or spaces: what is left is printable)."""

HOST_RULE = "http-request set-var(txn.sy_host) req.fhdr(host),lower,regsub(:[0-9]+$,),regsub([.]$,)"


def site_of(svc: ServiceConfig) -> str:
    """The frontend (and log) a service is served by: its own, or its shared listen's."""
    return shared_name(svc.listen) if svc.domains else svc.service


def shared_name(listen: str) -> str:
    """`listen-127.0.0.1-8443`: a proxy name HAProxy takes, never a service name (it has a dot
    or an underscore)."""
    host, _, port = listen.rpartition(":")
    safe = re.sub(r"[^A-Za-z0-9.]", "_", host)
    return f"{SHARED_SITE}{safe if '.' in safe or '_' in safe else safe + '_'}-{port}"


def redirect_name(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"redirect-{re.sub(r'[^A-Za-z0-9.]', '_', host)}-{port}"


def group(services: Sequence[ServiceConfig]) -> dict[str, list[ServiceConfig]]:
    """site -> its services (by name), refusing what cannot share an address: a listen used by
    a service without domains and another one; the same exact name or wildcard claimed twice
    on one address; TLS for some and not others on one address; one redirect address for two
    listen addresses. RouterError naming both services."""
    sites: dict[str, list[ServiceConfig]] = {}
    by_listen: dict[str, list[ServiceConfig]] = {}
    for svc in sorted(services, key=lambda s: s.service):
        sites.setdefault(site_of(svc), []).append(svc)
        by_listen.setdefault(svc.listen, []).append(svc)
    for listen, svcs in by_listen.items():
        alone = [s for s in svcs if not s.domains]
        if alone and len(svcs) > 1:
            other = next(s for s in svcs if s is not alone[0])
            raise RouterError(f"{alone[0].service} and {other.service} both listen on {listen}, and "
                              f"{alone[0].service} names no domains (it takes every Host there)",
                              "give each service on a shared listen its `domains`, or another `listen`")
        claimed: dict[str, str] = {}
        for svc in svcs:
            for name in svc.domains:
                if not _DOMAIN.match(name):
                    raise RouterError(f"domain {name!r} of {svc.service} is not a lowercase host name or *.name",
                                      "write it like shop.example.test or *.shop.example.test")
                if claimed.setdefault(name, svc.service) != svc.service:
                    raise RouterError(f"{svc.service} and {claimed[name]} both claim {name} on {listen}",
                                      "each host name (or wildcard) of a listen address belongs to one service")
        with_tls = [s for s in svcs if s.tls]
        without = [s for s in svcs if s.tls is False]
        if with_tls and without:
            raise RouterError(f"{without[0].service} serves plain HTTP on {listen}, which it shares with "
                              f"{with_tls[0].service} serving TLS",
                              f"give {without[0].service} a `tls` section too, or another `listen`")
    redirects: dict[str, str] = {}
    for svc in services:
        if svc.redirect_http is not None and redirects.setdefault(svc.redirect_http, svc.listen) != svc.listen:
            raise RouterError(f"tls.redirect_http {svc.redirect_http} of {svc.service} already redirects to "
                              f"{redirects[svc.redirect_http]}", "give it its own address")
    listens = {s.listen for s in services}
    for address in redirects:
        if address in listens:
            raise RouterError(f"tls.redirect_http {address} is another service's listen address",
                              "give the redirect its own address")
    return sites


def host_entries(svcs: Sequence[ServiceConfig]) -> dict[str, list[tuple[str, str]]]:
    """The shared frontend's maps: exact name -> service; `.suffix` -> service, longest first."""
    exact = sorted((d, s.service) for s in svcs for d in s.domains if not d.startswith("*."))
    wild = sorted(((d[1:], s.service) for s in svcs for d in s.domains if d.startswith("*.")),
                  key=lambda e: (-len(e[0]), e[0]))
    return {"hosts": exact, "wild": wild}


HOST_MAP_KINDS = ("hosts", "wild")


def render(services: Sequence[ServiceConfig], files: Files, log_format: str, start_rule: str = "") -> str:
    """The whole haproxy.cfg: config.py's global and defaults, then per site its ring, its
    frontend and its services' backends, then the redirect listeners."""
    sites = group(services)
    out = [cfg.render([], files, log_format, start_rule).rstrip("\n"), ""]
    for site in sorted(sites):
        out += cfg.ring_lines(site, files)
    for site, svcs in sorted(sites.items()):
        if svcs[0].domains:
            out += shared_frontend(site, svcs, files, log_format, start_rule)
        else:
            out += cfg._frontend(svcs[0], files, log_format, start_rule)
        for svc in svcs:
            for track in svc.tracks:
                out += cfg._backend(svc, track)
    done: set[str] = set()
    for svc in sorted(services, key=lambda s: s.service):
        if svc.redirect_http is not None and svc.redirect_http not in done:
            done.add(svc.redirect_http)
            out += redirect_frontend(svc, redirect_name(svc.redirect_http))
    return "\n".join(out) + "\n"


def shared_frontend(site: str, svcs: Sequence[ServiceConfig], files: Files, log_format: str,
                    start_rule: str) -> list[str]:
    tls = any(s.tls for s in svcs)
    crts = "".join(f" crt {files.cert_file(s.service)}" for s in svcs if s.tls)
    bind = f"{cfg.bind_address(svcs[0].listen)}{f' ssl{crts} {cfg.TLS_BIND}' if tls else ''}"
    found = "{ var(txn.sy_svc) -m found }"
    listen = svcs[0].listen
    lines = [
        *cfg.frontend_head(site, bind, site, log_format, start_rule),
        f"    {HOST_RULE}",
        f"    http-request set-var(txn.sy_svc) var(txn.sy_host),map_str({files.map_file(site, 'hosts')})",
        f"    http-request set-var(txn.sy_svc) var(txn.sy_host),map_end({files.map_file(site, 'wild')}) "
        f"unless {found}",
        f"    http-request return status 404 {PLAIN} string \"shipyard: no service on {listen} answers a request "
        "without a host name (send a Host header naming one of its domains)\\n\" hdr x-shipyard-error 1 "
        "unless { var(txn.sy_host) -m len gt 0 }",
        f"    http-request return status 404 {PLAIN} lf-string \"shipyard: no service on {listen} answers for host "
        f"%[var(txn.sy_host),bytes(0,{SHOWN_HOST})]\\n\" hdr x-shipyard-error 1 unless {found}",
        f"    {PREVIEW_ACL}",
    ]
    for svc in svcs:
        check_names(svc)
        acl = f"sy_for_{svc.service}"
        lines.append(f"    acl {acl} var(txn.sy_svc) -m str {svc.service}")
        lines += [f"    {rule_text(r, acl)}" for r in track_rules(svc, files)]
    lines += [f"    {r}" for r in forward_rules(tls)]
    for svc in svcs:
        lines += [f"    {rule_text(r, f'sy_for_{svc.service}')}" for r in backend_rules(svc)]
    return [*lines, ""]


REDIRECT_HOST = (r"'^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?"
                 r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$'")
"""The Host values a redirect is built from: router/dataplane/redirect.py's, as a HAProxy regex
(single-quoted: no escape or variable processing inside)."""


def redirect_frontend(svc: ServiceConfig, name: str | None = None) -> list[str]:
    """tls.redirect_http: every request answered 308 to https://<its Host, lowercased, without
    its port>[:<listen port> unless 443]<its path and query>, then the connection closed; the
    same answers as the embedded router's redirect.py (400 for no or several Host headers, a
    Host that is not a host name or address, or a request target that is not origin-form)."""
    if svc.redirect_http is None:
        return []
    port = int(svc.listen.rpartition(":")[2])
    https = "" if port == 443 else f":{port}"
    loc = f"https://%[var(txn.sy_rhost)]{https}%[url]"
    plain = 'content-type "text/plain; charset=utf-8"'
    return [
        f"frontend {name or f'redirect-{svc.service}'}",
        f"    bind {cfg.bind_address(svc.redirect_http)}",
        "    option httpclose",
        "    acl sy_one_host req.fhdr_cnt(host) eq 1",
        f"    acl sy_host_ok req.fhdr(host) -m reg -i {REDIRECT_HOST}",
        "    acl sy_host_short req.fhdr(host) -m len le 255",
        "    acl sy_origin_form url -m reg '^/[!-~]*$'",
        f"    http-request return status 400 {plain} string \"the request needs exactly one Host header\\n\" "
        "unless sy_one_host",
        f"    http-request return status 400 {plain} string \"the Host header or the path is not usable in a "
        "redirect\\n\" unless sy_host_ok sy_host_short sy_origin_form",
        "    http-request set-var(txn.sy_rhost) req.fhdr(host),lower,regsub(:[0-9]+$,)",
        f"    http-request return status 308 {plain} lf-string \"this service is served over https: {loc}\\n\" "
        f"hdr location \"{loc}\"",
        "",
    ]
