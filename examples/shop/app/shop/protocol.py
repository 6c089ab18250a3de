"""HTTP/1.1 on one connection: keep-alive, pipelining, Content-Length bodies.

Written on asyncio.Protocol (callbacks, no per-request task) because the shop is the
baseline of a throughput benchmark: the server itself must not be the bottleneck.
Chunked request bodies are refused with 411 so a client knows to send a length."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from shop.app import Reply, Request

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_REASONS = {s.value: s.phrase for s in HTTPStatus}

Handler = Callable[[Request], Reply | Awaitable[Reply]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectionSet:
    """What every connection of one listener shares: the handler, the fixed response
    headers, and whether the server is draining (then every response closes)."""

    def __init__(self, handler: Handler, fixed_headers: str) -> None:
        self.handler = handler
        self.fixed_headers = fixed_headers
        self.connections: set[HttpConnection] = set()
        self.draining = False

    def factory(self) -> HttpConnection:
        return HttpConnection(self)


class HttpConnection(asyncio.Protocol):
    def __init__(self, shared: ConnectionSet) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # an async reply is pending; later pipelined requests wait
        self.write_paused = False
        self.last_active = time.monotonic()
        self.pending: asyncio.Future[None] | None = None  # keeps the async reply's task alive

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.shared.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()
        self._process()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._transport().pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self._transport().is_closing():
            self._transport().resume_reading()
        self._process()

    # -- state ---------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Between requests: nothing received that is not answered, nothing pending."""
        return not self.busy and not self.buffer

    def close_if_idle(self) -> None:
        if self.idle:
            self._transport().close()

    def abort(self) -> None:
        self._transport().abort()

    # -- requests ------------------------------------------------------------------------
    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _process(self) -> None:
        transport = self._transport()
        while self.buffer and not self.busy and not self.write_paused and not transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end > MAX_HEAD or (end < 0 and len(self.buffer) > MAX_HEAD):
                self._fail(431, "request header fields too large")
                return
            if end < 0:
                return
            try:
                request, keep_alive, http10, length = parse_head(bytes(self.buffer[:end]))
            except BadRequest as exc:
                self._fail(exc.status, exc.message)
                return
            if length > MAX_BODY:
                self._fail(413, f"request body over {MAX_BODY} bytes")
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return  # the body is still on its way
            if length:
                request = Request(
                    request.method,
                    request.path,
                    request.query,
                    request.headers,
                    bytes(self.buffer[end + 4 : total]),
                )
            del self.buffer[:total]
            keep_alive = keep_alive and not self.shared.draining
            result = self.shared.handler(request)
            if isinstance(result, Reply):
                self._send(result, request.method == "HEAD", keep_alive, http10)
            else:
                self.busy = True
                self.pending = asyncio.ensure_future(
                    self._finish(result, request.method == "HEAD", keep_alive, http10)
                )

    async def _finish(self, pending: Awaitable[Reply], head: bool, keep_alive: bool, http10: bool) -> None:
        try:
            reply = await pending
        except Exception as exc:  # a handler bug answers 500, the connection survives
            reply = Reply(500, json.dumps({"error": repr(exc)}).encode())
        self.busy = False
        self.pending = None
        if self.transport is None or self.transport.is_closing():
            return
        self._send(reply, head, keep_alive and not self.shared.draining, http10)
        self._process()

    def _send(self, reply: Reply, head: bool, keep_alive: bool, http10: bool) -> None:
        transport = self._transport()
        if not keep_alive:
            connection = "Connection: close\r\n"
        elif http10:
            connection = "Connection: keep-alive\r\n"
        else:
            connection = ""
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers)
        status_line = f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"
        header = (
            f"{status_line}Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            f"{self.shared.fixed_headers}{extra}{connection}\r\n"
        ).encode("latin-1")
        transport.write(header if head else header + reply.body)
        self.last_active = time.monotonic()
        if not keep_alive:
            transport.close()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot parse and close: its framing is unknown, so is the next one's."""
        self.buffer.clear()
        body = json.dumps({"error": message}).encode() + b"\n"
        self._send(Reply(status, body), head=False, keep_alive=False, http10=False)


def parse_head(head: bytes) -> tuple[Request, bool, bool, int]:
    """Request line + headers -> (request without body, keep-alive?, HTTP/1.0?, body length)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method_b, target_b, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        raise BadRequest(400, "malformed request line")
    if not (target_b.startswith(b"/") or target_b == b"*"):
        raise BadRequest(400, "request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in headers:
            if key == "content-length" and headers[key] != text:
                raise BadRequest(400, "conflicting Content-Length headers")
            if key != "content-length":
                text = f"{headers[key]}, {text}"
        headers[key] = text
    method = method_b.decode("ascii")
    if "transfer-encoding" in headers:
        raise BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    raw_length = headers.get("content-length")
    if raw_length is None:
        if method in _BODY_METHODS:
            raise BadRequest(411, f"{method} needs a Content-Length header")
        length = 0
    elif raw_length.isdigit() and raw_length.isascii():
        length = int(raw_length)
    else:
        raise BadRequest(400, "Content-Length must be a non-negative integer")
    http10 = version == b"HTTP/1.0"
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
    target = target_b.decode("latin-1")
    path, _, query = target.partition("?")
    return Request(method, path, query, headers, b""), keep_alive, http10, length
