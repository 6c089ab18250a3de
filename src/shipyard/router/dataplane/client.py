"""A client connection to the data plane: HTTP/1.1 parsing, keep-alive, pipelining, timeouts.

It has each request head rewritten for the instance (framing.rewrite_request:
hop-by-hop and X-Shipyard-* headers out, X-Forwarded-* in, framing rebuilt), finds the
service its host names (hosts.py; a 404 when none) and hands it to an Exchange on that
service's plane; exchanges run one at a time per connection, in order, and `server` is
the plane of the one running. The connection outlives any table swap: only the next
request looks at the new table."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from shipyard.router.dataplane.answer import Answer
from shipyard.router.dataplane.exchange import P_BUFFER, P_PIPELINE, P_REFUSED, P_UPSTREAM, Exchange
from shipyard.router.dataplane.framing import Refused, error_response, rewrite_request
from shipyard.router.dataplane.hosts import HostMap, body_length, not_found, request_host, shown
from shipyard.router.dataplane.lifecycle import Plane
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.outbox import Outbox, Sender
from shipyard.router.table import user_bucket

log = logging.getLogger("shipyard.router")

MAX_HEAD = 64 * 1024
"""The longest request head accepted (431 beyond), whether or not a request is in progress before it."""
MAX_UNROUTED_BODY = 64 * 1024
"""The largest body of an unknown host's request read (and dropped) to keep its connection open."""


class Server(Protocol):
    """What a client needs from its listener (proxy_server.ProxyServer); only that one imports the other."""

    listen: str
    clients: set[ClientConnection]
    draining: bool
    clock: float
    client_head_timeout: float
    client_idle_timeout: float
    hosts: HostMap[Plane]
    unrouted: TrackMetrics
    outbox: Outbox | None


class ClientConnection(Sender, asyncio.Protocol):
    """One client connection: parses requests, runs their exchanges in order, keeps alive.
    Everything it writes goes through `send` (outbox.py)."""

    __slots__ = ("outbox", "out", "out_size", "tls", "front", "server", "transport", "parser", "peer", "url", "hdrs", "head_size", "in_head", "waiting", "active",
                 "queue", "reading", "paused", "chunk", "head_base", "write_paused", "write_paused_at", "deadline",
                 "draining", "closed", "bucket", "refusal", "proto", "unrouted")

    def __init__(self, front: Server) -> None:
        self.front = front
        self.server: Plane = front.hosts.every  # type: ignore[assignment]
        """The plane of the exchange running (what an Exchange calls `client.server`)."""
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.peer = b""
        self.proto = b"http"
        """X-Forwarded-Proto: https on a TLS listener."""
        self.tls = False
        self.outbox = front.outbox
        self.out: bytes | list[bytes] | None = None
        self.out_size = 0
        self.url = b""
        self.hdrs: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.chunk = 0
        """Length of the last chunk read."""
        self.head_base = 0
        """Length of the chunk the current head began in (not counted in head_size)."""
        self.in_head = False
        """The parser is inside a request head (its bytes count towards MAX_HEAD)."""
        self.waiting = False
        """No request is in progress and the head timeout runs for the next one."""
        self.active: Exchange | Answer | None = None
        """The exchange whose response is being produced; others wait in `queue` (pipelining)."""
        self.queue: deque[tuple[Exchange | Answer, Plane]] | None = None
        self.reading: Exchange | Answer | None = None
        """The exchange whose request body is being read (differs from `active` when pipelining)."""
        self.paused = 0
        self.write_paused = False
        self.write_paused_at = 0.0
        self.deadline = 0.0
        self.draining = self.closed = False
        self.bucket = -2
        """The client address's user bucket, hashed on first use (-2: not yet, -1: no address)."""
        self.refusal: bytes | None = None
        """The answer to a pipelined request refused while an earlier one is still in progress:
        sent (then the connection closes) once the requests before it are answered."""
        self.unrouted: bytes | None = None
        """An unknown host's 404 (nothing in progress before it) sent once its body has been read."""

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.proto = b"https" if self.tls else b"http"
        server = self.front
        server.clients.add(self)
        self.in_head = self.waiting = True
        self.deadline = server.clock + server.client_head_timeout
        if server.draining:
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.refusal is not None:  # the stream is no longer framed: nothing more is parsed
            return
        server = self.front
        if self.active is None and self.reading is None:
            if not self.waiting:
                self.waiting = True
                self.deadline = server.clock + server.client_head_timeout
        else:
            self.deadline = server.clock + server.client_idle_timeout
        self.chunk = n = len(data)
        if self.in_head:  # an upper bound: the chunk may also hold body bytes or the next head
            self.head_size += n
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:  # Upgrade is stripped: what follows is a new request
            self.parser = HttpRequestParser(self)
            rest = data[e.args[0]:]
            if rest and not self.closed:
                self.data_received(rest)
            return
        except HttpParserCallbackError:  # a bug of ours, not a bad request: make it visible
            log.exception("internal error while relaying a request")
            self.abort()
            return
        except HttpParserError as e:
            self._reject(400, f"bad request ({e})")
            return
        # Counted behind a request in progress too: the parser buffers a head until it is complete.
        if self.in_head and self.head_size > MAX_HEAD:
            self._reject(431, f"request head larger than {MAX_HEAD // 1024} KiB")

    def eof_received(self) -> bool:
        # A client that closes its side has given up (as nginx assumes; HTTP clients do not
        # half-close): its exchange is aborted so it holds no instance and no in-flight slot.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.out = None
        self.front.clients.discard(self)
        ex = self.active
        if ex is not None:
            self.active = None
            ex.abort()
        if self.queue:
            for q, _plane in self.queue:
                q.abort()
            self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.front.clock
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The first bytes of this head may share a chunk with the previous request: they are
        # not counted (at most one read), every later chunk is.
        self.in_head = True
        self.head_size = 0
        self.head_base = self.chunk

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # not a chunked body's trailer fields: those are dropped, never
            self.hdrs.append((name, value))  # left for the next request's head

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.closed or self.refusal is not None:  # after a request that ends the connection
            return
        p = self.parser
        hdrs, self.hdrs = self.hdrs, []
        url, self.url = self.url, b""
        # The head's bytes lie in the chunks read since it began (head_base + head_size), and each
        # header line has at least 2 bytes besides its name and value, so the size counted here
        # is at most twice those: only a head near the limit pays for the exact count.
        if ((self.head_base + self.head_size) * 2 > MAX_HEAD
                and len(url) + sum(len(n) + len(v) + 4 for n, v in hdrs) > MAX_HEAD):
            self._reject(431, f"request head larger than {MAX_HEAD // 1024} KiB")
            return
        method = p.get_method()
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):  # llhttp reads any digit.digit; the instance would not
            self._reject(505, f"HTTP/{version} is not supported: send HTTP/1.1")
            return
        http10 = version == "1.0"
        try:
            head, chunked, override, token, cookies = rewrite_request(method, url, http10, p.should_upgrade(), hdrs,
                                                                      self.peer, self.front.listen, self.proto)
        except Refused as e:
            self._reject(e.status, e.message)
            return
        hosts = self.front.hosts
        plane = hosts.every      # one service taking every host: no look at the host at all
        if plane is None:
            host = request_host(url, hdrs)
            plane = hosts.lookup(host)
            if plane is None:
                keep = version == "1.1" and p.should_keep_alive() and not p.should_upgrade()
                self._unknown_host(host, method == b"HEAD", keep, hdrs)
                return
        ex = Exchange(self, head, chunked, p.should_keep_alive(), http10, method == b"HEAD", override, token, hdrs,
                      cookies)
        self.waiting = False
        self.reading = ex
        if self.active is None:
            self.active = ex
            self.server = plane
            ex.start()
        else:
            self._enqueue(ex, plane)

    def _enqueue(self, ex: Exchange | Answer, plane: Plane) -> None:
        """`ex` waits for the requests before it; no more is read meanwhile (P_PIPELINE)."""
        if self.queue is None:
            self.queue = deque()
        self.queue.append((ex, plane))
        self.pause(P_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.reading
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.reading
        self.reading = None
        if ex is None and self.unrouted is not None:
            self._unrouted_done()
        elif ex is not None:
            if ex is self.active:
                self.deadline = 0.0  # now the instance's response timeout applies
            ex.request_complete()

    # -- used by exchanges and the server --------------------------------------------------

    def peer_bucket(self) -> int:
        """The bucket of the client's TCP peer address (the user key of last resort); -1 if unknown."""
        b = self.bucket
        if b == -2:
            b = self.bucket = user_bucket(self.peer) if self.peer else -1
        return b

    def exchange_done(self, ex: Exchange | Answer) -> None:
        if ex is not self.active:
            return
        self.active = None
        if self.paused:
            self.resume(P_BUFFER | P_UPSTREAM)
        if ex.close_after or self.draining:
            self.close()
            return
        server = self.front
        q = self.queue
        if not q and self.refusal is not None:
            self.send(self.refusal)
            self.close()
            return
        if q:
            nxt, self.server = q.popleft()
            self.active = nxt
            if not q:
                self.resume(P_PIPELINE)
            self.deadline = server.clock + server.client_idle_timeout if self.reading is nxt else 0.0
            nxt.start()
        else:
            self.waiting = False
            self.deadline = server.clock + server.client_idle_timeout

    def pause(self, why: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.paused |= why

    def resume(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.closed:
                self.transport.resume_reading()  # type: ignore[union-attr]

    def check_deadlines(self, now: float) -> None:
        """Called by the sweeper: client idle/head/body timeouts and the instance's 504."""
        server = self.front
        if self.deadline and now > self.deadline and not self.paused:
            if self.active is None and self.reading is None:
                self.close()
            else:
                self.abort()
            return
        if self.write_paused and now - self.write_paused_at > server.client_idle_timeout:
            self.abort()  # the client stopped reading its response
            return
        ex = self.active
        if ex is not None and ex.conn is not None and not ex.done and (ex.req_done or self.paused & P_UPSTREAM):
            conn = ex.conn
            if conn.seen or conn.read_paused:
                conn.seen = False
                ex.deadline = now + self.server.response_timeout
            elif ex.deadline and now > ex.deadline:
                ex.timeout()

    def drain(self) -> None:
        self.draining = True
        if self.active is None and self.reading is None:
            self.close()

    def close(self) -> None:
        """Close once what is written (held ones included) has gone out."""
        if not self.closed:
            self.flush_out()
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        """Cut the connection; what this iteration wrote before still goes first (it was meant to:
        a pipelined answer ahead of a request that cannot be completed)."""
        if not self.closed:
            self.flush_out()
        self.closed = True
        self.transport.abort()  # type: ignore[union-attr]

    def _unknown_host(self, host: str | None, head: bool, keep_alive: bool, hdrs: list[tuple[bytes, bytes]]) -> None:
        """No service here names the request's host: 404, counted as the listener's, in no
        service's tracks. The connection stays open when the request allows it (HTTP/1.1
        keep-alive, a body of known length up to MAX_UNROUTED_BODY, read and dropped first): the
        404 goes out in turn, after the answers to requests pipelined before it (an Answer in the
        queue); otherwise it closes, as for a refused request."""
        m = self.front.unrouted
        m.requests += 1
        m.observe(404, 0.0)
        if host is None:
            why = (f"no service on {self.front.listen} answers a request without a host name "
                   "(send a Host header naming one of its domains)")
        else:
            why = f"no service on {self.front.listen} answers for host {shown(host)}"
        length = body_length(hdrs) if keep_alive else None
        if length is not None and length <= MAX_UNROUTED_BODY and not self.closed and not self.draining:
            if self.active is None:
                self.unrouted = not_found(why, head, keep_alive=True)
                self.waiting = False
            else:
                self.reading = answer = Answer(self, not_found(why, head, keep_alive=True))
                self._enqueue(answer, self.server)
            return
        self._reject(404, why, not_found(why, head))

    def _unrouted_done(self) -> None:
        """The unknown host's request has been read in full: its 404, then wait for the next."""
        response, self.unrouted = self.unrouted, None
        if self.closed:
            return
        self.send(response)   # behind anything held for this connection (outbox.py)
        if self.draining:
            self.close()
            return
        self.waiting = False
        self.deadline = self.front.clock + self.front.client_idle_timeout

    def _reject(self, status: int, message: str, response: bytes | None = None) -> None:
        """The request cannot be parsed: answer if nothing else is in progress, then close."""
        if self.closed or self.refusal is not None:
            return
        if response is None:
            response = error_response(status, message, b"Connection: close\r\n")
        if self.active is not None:
            if self.reading is None:  # a later request is bad: the ones before it are answered first
                self.refusal = response
                self.pause(P_REFUSED)
            else:  # the request in progress itself cannot be completed
                self.abort()
            return
        self.send(response)
        self.close()
