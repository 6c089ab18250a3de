"""One request/response exchange through the data plane: the relay's state machine.

An Exchange is created when a request head has been read. It picks an instance
(round-robin within the chosen track, skipping ejected ones), relays the request
body as it arrives and the response as it comes back, and decides what is safe
to retry: a failed connect (nothing was sent) goes to another instance, and a
reused pooled connection that dies before any response byte is replayed once on a
fresh connection (the instance closed it while idle, so it processed nothing).
It never buffers a whole body: flow control pauses whichever side is ahead.
An instance takes at most max_conns_per_instance exchanges at once (its "slot" is held
from the pick to the end of the response); the steps overload adds (waiting for a slot,
a per-try retry) are in overload.py, the response side (the client's head and framing,
the instance lost before answering) in response.py; its states live in lifecycle.py, the
header rules in framing.py."""

from __future__ import annotations

import asyncio
from time import perf_counter

from shipyard.router.dataplane.framing import error_response
from shipyard.router.dataplane.lifecycle import (
    ANSWERED,
    FINISHED,
    FIRST,
    REPLAY_LIMIT,
    STREAMING,
    WAITING,
    Downstream,
)
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.overload import OverloadSteps
from shipyard.router.dataplane.response import M_NONE, ResponseRelay
from shipyard.router.dataplane.routes import FULL, RouteState, TrackRoute
from shipyard.router.dataplane.upstream import UpstreamConnection, UpstreamState
from shipyard.router.dataplane.waiting import WaitingQueue

# Why a client's reading is paused; it resumes when no reason is left.
P_UPSTREAM = 1  # the instance's socket buffer is full (request body flow control)
P_BUFFER = 2  # the request body waits for a connection to an instance
P_PIPELINE = 4  # a pipelined request waits for the one before it
P_REFUSED = 8  # a later request was refused: nothing more is read, the answers before it go out

BUFFER_LIMIT = 256 * 1024
"""Request body buffered while no instance connection is ready; beyond it the client waits."""


class Exchange(OverloadSteps, ResponseRelay):
    """One request and its response: picks the instance, relays both bodies, retries what
    is safe to retry, and records the outcome. Driven by callbacks from both connections."""

    __slots__ = ("client", "head", "chunked", "keep_alive", "http10", "is_head", "override", "token", "hdrs", "cookies",
                 "t0", "route", "metrics", "ups", "tried", "last_error", "conn", "connecting", "reused",
                 "attempt", "pending", "pending_size", "replay", "replay_size", "req_done", "phase",
                 "resp_mode", "until_close", "status", "close_after", "counted", "deadline", "wbuf", "slot",
                 "waiting_in", "queued_at", "reserved")

    def __init__(self, client: Downstream, head: bytes, chunked: bool, keep_alive: bool, http10: bool,
                 is_head: bool, override: bytes | None, token: bytes | None, hdrs: list[tuple[bytes, bytes]],
                 cookies: bytes | None) -> None:
        self.client = client
        self.head = head
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.http10 = http10
        self.is_head = is_head
        self.override = override
        self.token = token
        self.hdrs: list[tuple[bytes, bytes]] | None = hdrs
        self.cookies = cookies
        self.t0 = perf_counter()
        self.route: TrackRoute | None = None
        self.metrics: TrackMetrics | None = None
        self.ups: UpstreamState | None = None
        self.tried: list[UpstreamState] | None = None
        self.last_error = ""
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.reused = False
        self.attempt = FIRST
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.req_done = self.until_close = False
        self.phase = WAITING
        self.resp_mode = M_NONE
        self.status = 0
        self.close_after = self.counted = False
        self.deadline = 0.0
        self.wbuf: list[bytes] = []
        self.slot: UpstreamState | None = None
        """The instance whose in-flight slot this exchange holds."""
        self.waiting_in: WaitingQueue | None = None
        self.queued_at = 0.0
        self.reserved: UpstreamState | None = None
        """The instance counted in `unproven` for a connect task that has not started yet."""

    # -- choosing the instance --------------------------------------------------------

    @property
    def done(self) -> bool:
        """The response is over (complete, failed or aborted): nothing more is relayed."""
        return self.phase >= ANSWERED

    def start(self) -> None:
        st = self.client.server.state
        route = st.single  # the common case (one live track, no override) without a call
        if route is None or self.override is not None:
            route = self._route_in(st)
            if route is None:
                self.fail(503, f"service {self.client.server.service} has no live release")
                return
        self.route = route
        m = self.metrics = route.metrics
        m.requests += 1
        m.inflight += 1
        self.counted = True
        if route.waiting.count:  # others wait already: first come, first served
            self._wait(route, False)
            return
        ups = route.pick(None)  # _pick, inline for the common case (an instance can take it)
        if ups is FULL or ups is None:
            self._pick(route)  # the headers are kept until sent: a swap re-routes a waiting request by them
        else:
            self.send_to(ups)  # type: ignore[arg-type]

    def _route_in(self, st: RouteState) -> TrackRoute | None:
        override = self.override
        if override is not None and not st.preview_allowed(self.token):
            override = None  # forced-track routing is for holders of the preview token only
        if override is None and st.single is not None:
            return st.single  # the common case (one live track), without a call
        return st.route_for(override, self.hdrs, self.cookies, self.client)

    def _dispatch(self) -> None:
        self._free()
        assert self.route is not None
        self._pick(self.route)

    def _pick(self, route: TrackRoute) -> None:
        """Send to the next instance of `route` that can take the request, else wait or fail
        (no slot is held: a new request, or _dispatch gave its slot back)."""
        ups = route.pick(self.tried)
        if ups is FULL:
            self._wait(route, False)
        elif ups is None:
            reason = self.last_error or "the track has no instances"
            self.fail(502, f"no reachable instance of track {route.name} for service "
                           f"{self.client.server.service} ({reason})")
        else:
            self.send_to(ups)  # type: ignore[arg-type]

    def send_to(self, ups: UpstreamState) -> None:
        """Send the request to `ups`, which has a free slot (from _dispatch, or the queue's pump)."""
        self.hdrs = None
        self.ups = self.slot = ups
        ups.metrics.inflight += 1
        ups.metrics.requests += 1
        conn = ups.acquire()
        if conn is not None:
            self._attach(conn, True)
        else:
            self._open(ups)

    def _open(self, ups: UpstreamState) -> None:
        """Connect to `ups` in the background, counted as unproven from now on (see UNPROVEN_LIMIT)."""
        ups.unproven += 1
        self.reserved = ups
        self.connecting = self.client.server.loop.create_task(self._connect(ups))  # type: ignore[union-attr]

    async def _connect(self, ups: UpstreamState) -> None:
        self.reserved = None  # ups.connect() owns the count from here on
        try:
            conn = await ups.connect(self.client.outbox)
        except (OSError, TimeoutError) as e:
            self._connect_failed(ups, e)
            return
        if conn.closed:  # reset between connect and now: nothing was sent, same as a failed connect
            self._connect_failed(ups, ConnectionResetError(104, "Connection reset by peer"))
            return
        self.connecting = None
        if self.phase >= ANSWERED:
            ups.release(conn, self.client.server.clock)
        else:
            self._attach(conn, False)

    def _connect_failed(self, ups: UpstreamState, error: BaseException) -> None:
        self.connecting = None
        route = self.route
        reason = ups.connect_failed(error, route is None or route.may_eject(ups))
        if self.phase < ANSWERED:
            self.last_error = reason
            if self.tried is None:  # only failures are remembered: the happy path allocates nothing
                self.tried = [ups]
            else:
                self.tried.append(ups)
            self._dispatch()

    def _attach(self, conn: UpstreamConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        conn.ex = self
        conn.answered = conn.seen = False
        client = self.client
        if client.write_paused:
            conn.pause_reading()
        conn.send(self.head)
        body = self.replay if self.attempt is not FIRST and self.replay else self.pending
        if body:
            for data in body:
                conn.send(data)
        if self.pending is not None:
            self.pending = None
            self.pending_size = 0
            client.resume(P_BUFFER)
        if self.req_done:
            server = client.server
            self.deadline = server.clock + server.response_timeout
            if server.state.per_try_timeout > 0:
                self._watch_try(conn)

    # -- request side (called by the client connection) ------------------------------

    def request_body(self, data: bytes) -> None:
        if self.phase >= ANSWERED:
            return  # answered early (error or instance replied first): the rest is dropped
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        if self.replay_size <= REPLAY_LIMIT:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            elif self.replay is None:
                self.replay = [data]
            else:
                self.replay.append(data)
        conn = self.conn
        if conn is not None:
            conn.send(data)
            return
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > BUFFER_LIMIT:
            self.client.pause(P_BUFFER)

    def request_complete(self) -> None:
        self.req_done = True
        if self.phase >= ANSWERED:
            self._maybe_finish()
            return
        if self.chunked:
            self._forward(b"0\r\n\r\n")
        if self.conn is not None:
            server = self.client.server
            self.deadline = server.clock + server.response_timeout
            if server.state.per_try_timeout > 0:  # off by default: no call
                self._watch_try(self.conn)

    def upstream_pause(self, paused: bool) -> None:
        client = self.client
        if paused:  # the instance stopped reading the body: its silence is now timed too
            client.pause(P_UPSTREAM)
            self.deadline = client.server.clock + client.server.response_timeout
        else:
            client.resume(P_UPSTREAM)

    def timeout(self) -> None:
        server = self.client.server
        self.fail(504, f"instance {self._ups_id()} of service {server.service} did not answer "
                       f"within {server.response_timeout:g}s")

    # -- endings -----------------------------------------------------------------------

    def fail(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer with a router error (or cut the client if a response already started);
        `extra`: more header lines."""
        if self.phase >= ANSWERED:
            return
        self._detach()
        if self.phase is STREAMING:
            self._broken()
            return
        m = self.metrics
        if m is None:
            m = self.metrics = self.client.server.none_metrics
            m.requests += 1
            m.inflight += 1
            self.counted = True
        m.errors += 1
        client = self.client
        close = self.close_after or not self.keep_alive or client.draining
        self.close_after = close
        conn_header = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n" if self.http10 else b""
        self.wbuf.clear()
        client.send(error_response(status, message, extra + conn_header, not self.is_head))
        self.status = status
        self._finish_response()

    def _broken(self) -> None:
        """The response cannot be completed: the client must see a cut connection, not a lie."""
        self._detach()
        if self.counted and self.metrics is not None:
            self.metrics.errors += 1
            self.status = 502
        self.close_after = True
        self.client.abort()
        self._finish_response()

    def _finish_response(self) -> None:
        self.phase = ANSWERED
        if self.slot is not None:
            self._free()
        client = self.client
        if client.paused & P_UPSTREAM:
            client.resume(P_UPSTREAM)
        if self.counted:
            self.counted = False
            m = self.metrics
            assert m is not None
            m.inflight -= 1
            m.observe(self.status, (perf_counter() - self.t0) * 1000.0)
        if self.phase is not FINISHED and (self.req_done or self.close_after):  # _maybe_finish, inline
            self.phase = FINISHED
            client.exchange_done(self)

    def _maybe_finish(self) -> None:
        if self.phase is not FINISHED and (self.req_done or self.close_after):
            self.phase = FINISHED
            self.client.exchange_done(self)

    def _free(self) -> None:
        """Give back the instance's slot (the response is over, or the request moves on), and
        let the next waiting request have it."""
        ups = self.slot
        if ups is not None:
            self.slot = None
            ups.metrics.inflight -= 1
            if WaitingQueue.live:
                self.client.server.pump()

    def _detach(self) -> None:
        if self.waiting_in is not None:
            self.waiting_in.forget(self)
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
            if self.reserved is not None:  # cancelled before it ran: connect() never took the count
                self.reserved.unproven -= 1
                self.reserved = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.ex = None
            conn.close()

    def abort(self) -> None:
        """The client is gone: stop everything, count nothing but the in-flight decrement."""
        self._detach()
        self._free()
        if self.counted and self.metrics is not None:
            self.counted = False
            self.metrics.inflight -= 1
            self.metrics.aborted += 1
        self.phase = FINISHED

    def _ups_id(self) -> str:
        return self.ups.id if self.ups is not None else "?"
