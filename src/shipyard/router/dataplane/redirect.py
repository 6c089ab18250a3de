"""The plain-HTTP listener of a TLS service (`tls.redirect_http`): every request gets a 308
to the same path on https, then the connection closes.

The Location is built only from what the client itself sent (its Host, its path), and only
when the Host is a syntactically valid host name or address: a request cannot make the
router send anyone anywhere but to the https side of the name it asked for. The request
line must be origin-form (`GET /path`): an absolute URL there could name another host
than the Host header, so it is refused with 400 rather than guessed at."""

from __future__ import annotations

import asyncio
import re

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0

_HOST = re.compile(rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   rb"[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_TARGET = re.compile(rb"/[!-~]*")
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def location(host: bytes, target: bytes, https_port: int) -> bytes | None:
    """https://<host without its port>[:https_port]<target>, or None when either is unusable."""
    if not _HOST.fullmatch(host) or not _TARGET.fullmatch(target) or len(host) > 255:
        return None
    if host.startswith(b"["):
        name = host[:host.index(b"]") + 1]
    else:
        name = host.rsplit(b":", 1)[0] if b":" in host else host
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://" + name.lower() + port + target


def _answer(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            % len(body) + extra + b"Connection: close\r\n\r\n" + body)


def respond(head: bytes, https_port: int) -> bytes:
    """The whole answer to one request head (up to and without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not parts[2].startswith(b"HTTP/1."):
        return _answer(b"400 Bad Request", b"not an HTTP/1.x request\n")
    hosts = [ln.split(b":", 1)[1].strip() for ln in lines[1:] if ln[:5].lower() == b"host:"]
    if len(hosts) != 1:
        return _answer(b"400 Bad Request", b"the request needs exactly one Host header\n")
    loc = location(hosts[0], parts[1], https_port)
    if loc is None:
        return _answer(b"400 Bad Request", b"the Host header or the path is not usable in a redirect\n")
    return _answer(b"308 Permanent Redirect", b"this service is served over https: " + loc + b"\n",
                   b"Location: " + loc + b"\r\n")


class RedirectConnection(asyncio.Protocol):
    """One plain-HTTP client: read one head (bounded in size and time), answer, close."""

    def __init__(self, https_port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.https_port = https_port
        self.loop = loop
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.loop.call_later(HEAD_TIMEOUT, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._send(_answer(b"431 Request Header Fields Too Large", b"request head too large\n"))
            return
        self._send(respond(self.buf[:end], self.https_port))

    def _send(self, answer: bytes) -> None:
        assert self.transport is not None
        self.transport.write(answer)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
