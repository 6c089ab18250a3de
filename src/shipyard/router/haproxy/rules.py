"""The frontend rules that pick a request's track and clean it before it is forwarded.

The user key is the first sticky header, else the sticky cookie, else the client address (as
text, like the embedded router's), hashed with `crc32,mod(10000)` = table.user_bucket; no key:
`rand(10000)`. The bucket's track comes from the service's bucket map (maps.py); with the
preview token, X-Shipyard-Track overrides it. Every client X-Shipyard-* header is deleted
before the request is forwarded. A request whose instance closed without answering is retried
(config.py's `retry-on`) if it is idempotent, or if it was not the first of its client
connection: HAProxy (`http-reuse safe`) sends a first request only over a new connection to the
instance, and a later one may meet a kept-alive connection the instance closes as it arrives
(HAProxy would close the client's connection instead, leaving the retry to the client); the
embedded router replays that one too. The rule cannot see whether the connection was reused,
so a later POST whose instance died while serving it on a new connection is replayed as well,
where the embedded router answers 502."""

from __future__ import annotations

import re

from shipyard.errors import RouterError
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.maps import MAP_KINDS
from shipyard.router.haproxy.services import ServiceConfig
from shipyard.router.table import BUCKETS

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_SERVICE = re.compile(r"^[a-z0-9-]+$")

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
