"""Which service of a shared listen address a request is for: by its host name.

The name is the absolute-form request target's host when there is one (RFC 9112 3.2.2:
it wins over Host), else the Host header's, with any port cut off and lowercased. An exact
name wins; else the longest wildcard (`*.shop.test` for a.b.shop.test, not shop.test);
else no service (the listener answers 404). A listener with one service that names no
domains sends every request there without looking (today's single-service address).
TLS handshakes pick a certificate the same way by SNI (tls.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

SHOWN_HOST = 200
"""Characters of an unknown host quoted back in the 404 body."""


class HostMap(Generic[T]):
    """Exact names and wildcard suffixes -> a service's plane; or one plane taking every host."""

    __slots__ = ("exact", "wild", "every")

    def __init__(self, entries: Iterable[tuple[Iterable[str], T]] = ()) -> None:
        self.exact: dict[str, T] = {}
        self.wild: dict[str, T] = {}
        """".shop.test" -> plane, for "*.shop.test"."""
        self.every: T | None = None
        for names, plane in entries:
            names = list(names)
            if not names:
                self.every = plane
            for name in names:
                if name.startswith("*."):
                    self.wild[name[1:]] = plane
                else:
                    self.exact[name] = plane

    def lookup(self, host: str | None) -> T | None:
        if self.every is not None:
            return self.every
        if not host:
            return None
        plane = self.exact.get(host)
        if plane is not None:
            return plane
        wild = self.wild
        if wild:
            dot = host.find(".")
            while dot > 0:      # longest suffix first: a.b.shop.test tries .b.shop.test, then .shop.test
                plane = wild.get(host[dot:])
                if plane is not None:
                    return plane
                dot = host.find(".", dot + 1)
        return None


def request_host(url: bytes, hdrs: list[tuple[bytes, bytes]]) -> str | None:
    """The lowercased host a request names (absolute-form target, else Host), port cut off."""
    raw = None
    if url[:1] != b"/" and b"://" in url[:8]:
        rest = url.split(b"://", 1)[1]
        for stop in (b"/", b"?", b"#"):
            rest = rest.split(stop, 1)[0]
        raw = rest.rsplit(b"@", 1)[-1]
    else:
        for name, value in hdrs:
            if len(name) == 4 and name.lower() == b"host":
                raw = value
                break
    if raw is None:
        return None
    return host_name(raw.strip().decode("latin-1"))


def host_name(raw: str) -> str:
    """'Shop.Test:8443' -> 'shop.test'; '[::1]:8080' -> '[::1]'; a trailing dot is dropped."""
    if raw.startswith("["):
        end = raw.find("]")
        return raw[:end + 1].lower() if end > 0 else raw.lower()
    return raw.rsplit(":", 1)[0].rstrip(".").lower() if ":" in raw else raw.rstrip(".").lower()


def shown(host: str | None) -> str:
    """A host from a request as safe plain text: printable ASCII, the rest escaped, bounded."""
    if host is None:
        return "(none)"
    out = "".join(c if 0x20 < ord(c) < 0x7f and c != "\\" else f"\\x{ord(c):02x}" for c in host[:SHOWN_HOST])
    return out + ("..." if len(host) > SHOWN_HOST else "")


def not_found(message: str, head: bool = False, keep_alive: bool = False) -> bytes:
    """The listener's 404 for an unknown host: plain text saying which host and where (the
    body left out for a HEAD request); `Connection: close` unless the connection stays open."""
    body = b"shipyard: %s\n" % message.encode("ascii", "backslashreplace")
    return (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"X-Shipyard-Error: 1\r\n%s\r\n%s") % (len(body), b"" if keep_alive else b"Connection: close\r\n",
                                                  b"" if head else body)


def body_length(hdrs: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length (0 without one), or None when it cannot be told cheaply
    (chunked, several or bad values) or the client waits to be told to send it (Expect): a
    request whose body is not read in full before its 404 cannot leave its connection framed
    for the next one."""
    length = 0
    seen = False
    for name, value in hdrs:
        lname = name.lower()
        if lname == b"transfer-encoding" or lname == b"expect":
            return None
        if lname == b"content-length":
            if seen or not value.strip().isdigit():
                return None
            seen, length = True, int(value)
    return length
