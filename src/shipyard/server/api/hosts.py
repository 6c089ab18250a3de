"""Which `Host:` the API answers to. A page on any web site can make a browser send requests
to 127.0.0.1 under the site's own name (DNS rebinding) and read the answers of the public
dashboard views; refusing every Host that is not a loopback name of our port, or a name the
operator configured (`serve --api-host NAME`), closes that."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost"})


def split_host(value: str) -> tuple[str, int | None] | None:
    """`Host:` -> (lowercased name or address, port or None); None when it is not a host[:port]."""
    value = value.strip().lower()
    if value.count(":") > 1 and not value.startswith("["):
        try:        # a bare IPv6 address, as the rollback fast paths send it
            return str(ipaddress.IPv6Address(value)), None
        except ValueError:
            return None
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")
        if ":" in port_text:
            return None
        port_text = port_text if sep else None
    if not name or (port_text is not None and not (port_text.isascii() and port_text.isdigit()
                                                   and 0 < len(port_text) <= 5)):
        return None
    return name, int(port_text) if port_text is not None else None


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """Loopback names with the port we listen on (or none; None: any port), plus configured names."""

    port: int | None = None
    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, port: int | None, names: Iterable[str] = ()) -> HostPolicy:
        return cls(port, frozenset(n.strip().lower().strip("[]") for n in names if n.strip()))

    def allows(self, header: str | None) -> bool:
        parsed = split_host(header) if header is not None else None
        if parsed is None:
            return False
        name, port = parsed
        if name in self.names:
            return True
        if not is_loopback(name):
            return False
        # no port is accepted too: the rollback fast paths (bin/shipyard, entry.py) send the bare address
        return self.port is None or port is None or port == self.port


class HostGuard:
    """ASGI middleware: answer 421 before any route runs when the Host is not allowed."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
        if len(hosts) == 1 and self.policy.allows(hosts[0]):
            await self.app(scope, receive, send)
            return
        shown = hosts[0][:100] if len(hosts) == 1 else "(none)" if not hosts else "(more than one)"
        port = self.policy.port or "PORT"
        response = JSONResponse({
            "error": f"this shipyard daemon does not answer to Host: {shown}",
            "hint": f"use http://127.0.0.1:{port}/ (or localhost); to reach it under another name, start the "
                    "daemon with --api-host NAME (other names are refused so that a web page cannot read "
                    "the API through DNS rebinding)",
            "kind": "HostRefused"}, status_code=421)
        await response(scope, receive, send)
