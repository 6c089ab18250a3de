"""Small writes held until the end of the event-loop iteration, then sent one after another.

Written at once, each response (and each request relayed to an instance) went out between
the callbacks of the other connections, microseconds apart: a peer (the load balancer in
front, an instance) that had just gone back to sleep was woken by the kernel for every one,
and the wakeups were the largest part of the router's kernel time (issue 14's profile).
Held here, the writes of one iteration leave in one burst, so a peer is woken once per
burst; they still leave before the loop waits for I/O again (one `call_soon` per iteration,
not per write), so no latency is added.

A connection's held bytes keep their order with everything else it writes (every write of
the connection goes through `send`) and are sent before it closes. A client connection sends
them before an abort too (they would have been in the kernel already); an instance's
connection drops them (an aborted request is better not sent at all). Past OUT_LIMIT bytes
a connection writes at once, so a streamed body stays under the transport's flow control
(pause_writing) as before."""

from __future__ import annotations

import asyncio

OUT_LIMIT = 64 * 1024
"""Bytes a connection may hold for the end of the iteration; beyond, it writes now."""


class Outbox:
    """The connections holding writes in this iteration of one event loop."""

    __slots__ = ("loop", "held")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: list[Sender] = []

    def flush(self) -> None:
        """Send what every connection holds (run by the loop once per iteration that held any).
        Sender.flush_out, inline: this runs for every response."""
        held, self.held = self.held, []
        for s in held:
            out = s.out
            if out is not None:
                s.out = None
                if not s.closed:
                    if type(out) is bytes:
                        s.transport.write(out)  # type: ignore[union-attr]
                    elif s.tls:
                        s.transport.write(b"".join(out))  # type: ignore[union-attr]
                    else:
                        s.transport.writelines(out)  # type: ignore[union-attr]


class Sender:
    """The writing side of a connection (client.ClientConnection, upstream.UpstreamConnection):
    `send` instead of transport.write. The subclass sets `transport`, `outbox` and `closed`,
    and `out` to None."""

    __slots__ = ()
    transport: asyncio.Transport | None
    outbox: Outbox | None
    closed: bool
    out: bytes | list[bytes] | None
    """What is held: one buffer as it is (the common case: no list to make), several in a list."""
    out_size: int
    """Bytes held, once there are several buffers."""
    tls: bool

    def send(self, data: bytes) -> None:
        """Write `data` at the end of this loop iteration (now, without an outbox or when much
        is held already)."""
        out = self.out
        if out is None:
            box = self.outbox
            if box is None or len(data) > OUT_LIMIT:
                self.transport.write(data)  # type: ignore[union-attr]
                return
            self.out = data
            held = box.held
            if not held:
                box.loop.call_soon(box.flush)
            held.append(self)
            return
        if type(out) is bytes:
            self.out_size = len(out)
            out = self.out = [out]
        out.append(data)  # type: ignore[union-attr]
        self.out_size += len(data)
        if self.out_size > OUT_LIMIT:
            self.flush_out()

    def flush_out(self) -> None:
        """Write what is held now (before a close, or at the end of the iteration)."""
        out = self.out
        if out is None:
            return
        self.out = None
        if self.closed:
            return
        if type(out) is bytes:
            self.transport.write(out)  # type: ignore[union-attr]
        elif self.tls:  # the SSL transport makes one record (one encryption) per buffer
            self.transport.write(b"".join(out))  # type: ignore[union-attr]
        else:
            self.transport.writelines(out)  # type: ignore[union-attr]

    def drop_out(self) -> None:
        """Forget what is held (an instance's connection is aborted: its state is unknown)."""
        self.out = None
