"""The response side of an exchange: what an instance's answer becomes for the client.

A mixin of exchange.Exchange (whose state it uses; exchange.py is the only module that uses
it), kept apart from choosing the instance and relaying the request: the status line and
the relayed fields are rebuilt once per response, the framing towards the client is decided
from what the instance announced (its own Content-Length, chunked, or the end of its
connection), and an instance that goes away before answering is the one place where a
request may be sent again (what is safe to retry: the module docstring of exchange.py).
What comes back is handed to the client connection, which writes it at the end of the loop
iteration (outbox.py)."""

from __future__ import annotations

from shipyard.router.dataplane.framing import (
    NEVER_HOP,
    R_CHUNKED,
    R_LENGTH,
    STATUS_LINES,
    status_line,
    without_fields,
)
from shipyard.router.dataplane.lifecycle import (
    ANSWERED,
    FIRST,
    IDEMPOTENT,
    INTERIM,
    MOVED,
    REPLAY_LIMIT,
    REPLAYED,
    STREAMING,
    WAITING,
)
from shipyard.router.dataplane.upstream import UpstreamConnection

SMALL_BODY = 4096
"""A response whose head and body came in one read is sent as one buffer up to this body size
(copying it costs less than the kernel's writev of two); a larger one is sent as it is."""
# How the response body is framed towards the client.
M_NONE, M_RAW, M_CHUNK = 0, 1, 2


class ResponseRelay:
    """Exchange methods called by the upstream connection (upstream.ResponseSink); `self` is
    always an exchange.Exchange (not imported here: exchange imports this module)."""

    __slots__ = ()

    def response_head(self, status: int, reason: bytes, lines: list[bytes], framing: int,
                      drop: set[bytes] | None) -> None:
        if self.phase >= ANSWERED:
            return
        if status < 200:
            if status == 101:
                self.fail(502, f"instance {self._ups_id()} of service {self.client.server.service} "
                               "switched protocols, which shipyard does not proxy")
                return
            self.phase = INTERIM
            if self.http10:
                return
        line = STATUS_LINES.get((status, reason))
        lines[0] = status_line(status, reason) if line is None else line
        if drop:  # never the framing: the client must read the body the way it was counted
            lines = without_fields(lines, 1, drop - NEVER_HOP)
        if self.phase is INTERIM:
            lines.append(b"\r\n")
            self.wbuf.append(b"".join(lines))
            return
        client = self.client
        close = self.close_after or not self.keep_alive or client.draining
        if self.is_head or status == 204 or status == 304:
            mode = M_NONE
        elif framing != R_LENGTH:  # chunked, or no length at all (the body ends with the close)
            chunked_up = framing & R_CHUNKED
            self.until_close = not chunked_up
            if self.http10:  # no chunked encoding for HTTP/1.0: the end of the body is the close
                mode = M_RAW
                close = True
            else:
                mode = M_CHUNK
                lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            mode = M_RAW
        if close:
            lines.append(b"Connection: close\r\n\r\n")
            self.close_after = True
        elif self.http10:
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        self.resp_mode = mode
        self.status = status
        self.phase = STREAMING
        self.wbuf.append(b"".join(lines))

    def response_body(self, data: bytes) -> None:
        mode = self.resp_mode
        if mode == M_RAW:
            self.wbuf.append(data)
        elif mode == M_CHUNK:
            self.wbuf += (b"%x\r\n" % len(data), data, b"\r\n")

    def flush(self) -> None:
        """Hand what the last upstream read produced to the client connection, which sends it
        with the rest of this loop iteration's writes (one syscall, one packet; outbox.py)."""
        buf = self.wbuf
        if buf:
            send = self.client.send
            for data in buf:
                send(data)
            buf.clear()

    def response_complete(self, keep_alive: bool) -> None:
        if self.phase is INTERIM:
            self.phase = WAITING
            return
        conn = self.conn
        self.conn = None
        buf = self.wbuf
        if self.resp_mode == M_CHUNK:
            buf.append(b"0\r\n\r\n")
        if buf:  # flush(), inline: this runs once per request
            if len(buf) == 2 and len(buf[1]) <= SMALL_BODY:  # a head and a small body: one buffer, one write()
                self.client.send(buf[0] + buf[1])
            else:
                send = self.client.send
                for data in buf:
                    send(data)
            buf.clear()
        if conn is not None:
            if keep_alive and self.req_done and not conn.closed:
                self.ups.release(conn, self.client.server.clock)  # type: ignore[union-attr]
            else:
                conn.ex = None
                conn.close()
        self._finish_response()

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.conn is conn:
            self.conn = None
        if self.phase >= ANSWERED:
            return
        if self.phase is STREAMING:
            if self.until_close:  # the close is the end of this body
                if self.resp_mode == M_CHUNK:
                    self.wbuf.append(b"0\r\n\r\n")
                self.flush()
                self._finish_response()
            else:
                self._broken()
            return
        svc = self.client.server.service
        if conn.answered:
            self.fail(502, f"instance {self._ups_id()} of service {svc} sent an incomplete response")
        elif self.reused and self.attempt is FIRST and self.replay_size <= REPLAY_LIMIT:
            # The instance closed an idle pooled connection as we wrote to it: nothing was
            # processed, so the request is replayed once on a fresh connection.
            self.attempt = REPLAYED
            self.wbuf.clear()
            self._open(self.ups)  # type: ignore[arg-type]
        elif (self.attempt is not MOVED and self.req_done and self.replay_size <= REPLAY_LIMIT
              and self.head.split(b" ", 1)[0] in IDEMPOTENT):
            # The instance went away with the request in flight (killed, crashed): nothing
            # was answered, and an idempotent request may safely run again, so it goes to
            # another instance of the track, as HAProxy's `retry-on empty-response` does.
            # (Also after a replay on the same instance: a dying instance may still accept
            # the fresh connection and then drop it.)
            self.attempt = MOVED
            self.last_error = "an instance closed the connection without answering"
            if self.tried is None:
                self.tried = [self.ups]  # type: ignore[list-item]
            else:
                self.tried.append(self.ups)  # type: ignore[arg-type]
            self.wbuf.clear()
            self._dispatch()
        else:
            self.fail(502, f"instance {self._ups_id()} of service {svc} closed the connection without answering")

    def upstream_invalid(self, conn: UpstreamConnection, error: Exception) -> None:
        if self.conn is conn:
            self.conn = None
        if self.phase >= ANSWERED:
            return
        if self.phase is STREAMING:
            self._broken()
        else:
            self.fail(502, f"instance {self._ups_id()} of service {self.client.server.service} "
                           f"sent an invalid HTTP response ({error})")
