"""Connections from the data plane to instances, and their keep-alive pools.

Reusing connections is most of the router's speed; it is also the source of the
classic restart race (the instance closes an idle connection just as a request is
written to it), which the exchange handles by retrying on a fresh connection. Ejecting an
instance that fails, probing it and taking it back is ejection.py's (UpstreamState inherits it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpResponseParser

from shipyard.router.dataplane.ejection import CONNECT_TIMEOUT, SILENT, Ejection
from shipyard.router.dataplane.framing import (
    H_CONN,
    H_LEN,
    H_TE,
    R_CHUNKED,
    R_LENGTH,
    RESPONSE_HEADERS,
    connection_tokens,
)
from shipyard.router.dataplane.metrics import UpstreamMetrics
from shipyard.router.dataplane.outbox import Outbox, Sender
from shipyard.router.table import Upstream

log = logging.getLogger("shipyard.router")

MAX_IDLE_PER_UPSTREAM = 1024
IDLE_POOL_TIMEOUT = 60.0
"""Close pooled connections unused for this long; instances usually close theirs sooner."""
UNPROVEN_LIMIT = 4
"""New connections per instance not yet answered on: one still unanswered may be waiting in the
instance's accept backlog, so a burst of clients ramps connections up instead of overflowing
a small backlog (half of 8, the smallest backlogs seen in practice: the rest is left to health
checks and other clients)."""


class ResponseSink(Protocol):
    """The side of an exchange that receives one upstream response (proxy.Exchange)."""

    is_head: bool

    def response_head(self, status: int, reason: bytes, lines: list[bytes], framing: int,
                      drop: set[bytes] | None) -> None:
        """`lines`: the head's relayed fields as pieces (name, b": ", value, b"\\r\\n" each), after
        lines[0], left for the status line; `framing`: R_LENGTH | R_CHUNKED as announced;
        `drop`: the names the instance's Connection header lists."""

    def response_body(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def response_complete(self, keep_alive: bool) -> None: ...

    def upstream_lost(self, conn: UpstreamConnection) -> None: ...

    def upstream_invalid(self, conn: UpstreamConnection, error: Exception) -> None: ...

    def upstream_pause(self, paused: bool) -> None: ...


class UpstreamConnection(Sender, asyncio.Protocol):
    """One HTTP/1.1 connection to an instance; carries one exchange at a time. The exchange
    writes to it with `send` (outbox.py)."""

    __slots__ = ("outbox", "out", "out_size", "tls", "state", "transport", "parser", "ex", "reason", "lines", "framing", "drop", "seen", "answered",
                 "head_done", "head_keep", "read_paused", "idle_since", "closed", "unproven")

    def __init__(self, state: UpstreamState, outbox: Outbox | None = None) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.outbox = outbox
        self.out: bytes | list[bytes] | None = None
        self.out_size = 0
        self.tls = False
        self.parser = HttpResponseParser(self)
        self.ex: ResponseSink | None = None
        self.reason = b""
        self.lines: list[bytes] | None = [b""]
        """The response head's fields to relay, as pieces after a slot for the status line (see
        ResponseSink.response_head), classified as they are parsed: the exchange never walks
        them again. None once the head is complete: a chunked body's trailer fields are dropped,
        never kept for the next response on the connection."""
        self.framing = 0
        """R_LENGTH | R_CHUNKED: what the head's Content-Length / Transfer-Encoding announced."""
        self.drop: set[bytes] | None = None
        self.seen = False
        """Bytes arrived since the timeout sweeper last looked (cheaper than a timer per read)."""
        self.answered = False
        """At least one response byte arrived for the current exchange: no retry any more."""
        self.head_done = False
        self.head_keep = False
        self.read_paused = False
        self.idle_since = 0.0
        self.closed = False
        self.unproven = False
        """Counted in its state's `unproven`: opened, nothing arrived on it yet (set by connect)."""

    def proven(self) -> None:
        if self.unproven:
            self.unproven = False
            self.state.unproven -= 1

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # an idle connection must stay silent; anything else is desync
            self.close()
            return
        self.seen = self.answered = True
        if self.unproven:
            self.proven()
        try:
            self.parser.feed_data(data)
        except HttpParserError as e:
            if isinstance(e, HttpParserCallbackError):  # a bug of ours: make it visible
                log.exception("internal error while relaying a response")
            self.close()
            if self.ex is not None:
                self.ex = None
                ex.upstream_invalid(self, e)
            return
        if self.head_done:  # a HEAD response has no body, whatever its headers announce
            self.head_done = False
            self.parser = HttpResponseParser(self)
            self.lines, self.reason, self.framing, self.drop = [b""], b"", 0, None
            if self.ex is not None:
                self.ex.response_complete(self.head_keep)
        elif self.ex is not None:
            self.ex.flush()  # one client write per upstream read

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.out = None
        self.proven()
        ex = self.ex
        if ex is None:
            self.state.forget(self)
        else:
            self.ex = None
            ex.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.ex is not None:
            self.ex.upstream_pause(True)

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.upstream_pause(False)

    # -- httptools callbacks ------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lines = self.lines
        if lines is None:  # a trailer field (after a chunked body): not relayed
            return
        lname = name.lower()
        code = RESPONSE_HEADERS.get(lname)
        if code is None:
            if lname[0] == 112 and lname[:6] == b"proxy-":  # 112: "p" (llhttp refuses empty names)
                return
        elif code == H_LEN:
            self.framing |= R_LENGTH
        else:  # hop-by-hop: never relayed; the exchange writes the client's own framing
            if code == H_TE:
                if b"chunked" in value.lower():
                    self.framing |= R_CHUNKED
            elif code == H_CONN:
                self.drop = connection_tokens(value, self.drop)
            return
        lines += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        ex = self.ex
        lines, self.lines = self.lines, None
        if ex is None or lines is None:
            return
        status = self.parser.get_status_code()
        if ex.is_head and status >= 200:
            self.head_done = True
            self.head_keep = self.parser.should_keep_alive()
        ex.response_head(status, self.reason, lines, self.framing, self.drop)

    def on_body(self, body: bytes) -> None:
        if self.ex is not None:
            self.ex.response_body(body)

    def on_message_complete(self) -> None:
        self.head_done = False
        self.lines, self.reason, self.framing, self.drop = [b""], b"", 0, None  # the next response's head
        if self.ex is not None:
            self.ex.response_complete(self.parser.should_keep_alive())

    # -- used by the exchange -----------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            if not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        """Close now, dropping anything unsent: the connection's state is unknown."""
        self.closed = True
        self.out = None
        self.proven()
        if self.transport is not None:
            self.transport.abort()


class UpstreamState(Ejection):
    """Everything the data plane knows about one instance, across table versions."""

    __slots__ = ("upstream", "id", "metrics", "idle", "retired", "probe", "last_error", "unproven", "ejected_for",
                 "wake")

    def __init__(self, upstream: Upstream, wake: Callable[[], None] | None = None) -> None:
        self.upstream = upstream
        self.id = upstream.id
        self.metrics = UpstreamMetrics()
        self.idle: list[UpstreamConnection] = []
        self.retired = False
        self.probe: asyncio.Task[None] | None = None
        self.last_error = ""
        self.unproven = 0
        """Connections being opened, or open and not answered on yet (see UNPROVEN_LIMIT)."""
        self.ejected_for = ""
        self.wake = wake
        """Called when the instance is back in rotation: requests queued for it may go now."""

    def can_take(self, limit: int) -> bool:
        """Whether one more request may go here now: below the in-flight limit, and either a
        pooled connection is ready or few enough new ones are still unanswered."""
        return self.metrics.inflight < limit and (bool(self.idle) or self.unproven < UNPROVEN_LIMIT)

    def acquire(self) -> UpstreamConnection | None:
        """A pooled connection still believed open, most recently used first."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Return a connection whose response is complete, or close it if it cannot be reused."""
        conn.ex = None
        conn.answered = False
        if conn.closed or self.retired or len(self.idle) >= MAX_IDLE_PER_UPSTREAM:
            conn.close()
            return
        if conn.read_paused:  # an idle connection must read so that a close is noticed
            conn.resume_reading()
        conn.idle_since = now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """The instance closed an idle connection: drop it from the pool."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def expire_idle(self, now: float) -> None:
        if self.idle and now - self.idle[0].idle_since > IDLE_POOL_TIMEOUT:
            keep = [c for c in self.idle if now - c.idle_since <= IDLE_POOL_TIMEOUT]
            for c in self.idle:
                if now - c.idle_since > IDLE_POOL_TIMEOUT:
                    c.close()
            self.idle = keep

    async def connect(self, outbox: Outbox | None = None) -> UpstreamConnection:
        """A fresh connection (writing through `outbox`); raises OSError or TimeoutError (the caller ejects). The caller
        counted it in `unproven` already, when it decided to connect (before this coroutine
        ran: requests of one loop iteration must see each other's connects)."""
        loop = asyncio.get_running_loop()
        host, port = self.upstream.host, self.upstream.port
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self, outbox), host, port)
        except BaseException:
            self.unproven -= 1
            raise
        if conn.closed:
            self.unproven -= 1
        else:
            conn.unproven = True
        if self.metrics.ejected and self.ejected_for != SILENT:  # it came back before its probe noticed
            self._readmit()
        return conn

    def retire(self) -> None:
        """No table routes here any more: close idle connections now, busy ones when done."""
        self.retired = True
        for c in self.idle:
            c.close()
        self.idle.clear()
        if self.probe is not None:
            self.probe.cancel()
            self.probe = None

