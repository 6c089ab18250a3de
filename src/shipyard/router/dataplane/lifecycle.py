"""An exchange's lifecycle as data, and what it needs from the two sides it connects.

The states replace a dozen booleans whose combinations had to be read off the
code; the Protocols let client.py and proxy_server.py hand themselves to an Exchange
without exchange.py importing either of them (no import cycle in the data plane)."""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Protocol

from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.routes import RouteState
from shipyard.router.dataplane.tries import TryWatch

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
"""Methods RFC 9110 calls idempotent: safe to send again after an instance died mid-request."""
REPLAY_LIMIT = 1024 * 1024
"""Request body kept for a retry on a fresh connection; a longer body is not retried."""


class Phase(enum.IntEnum):
    """Where the response side of an exchange is; ordered, so `>= ANSWERED` means "over"."""

    WAITING = 0
    """No response byte relayed to the client yet: a failure can still be answered (or retried)."""
    INTERIM = 1
    """Relaying a 1xx response; the final one follows on the same connection."""
    STREAMING = 2
    """The final response head went out: a failure now can only cut the connection."""
    ANSWERED = 3
    """The response is complete (or failed); the request body may still be arriving."""
    FINISHED = 4
    """Handed back to the client connection, which moves on to the next request."""


class Attempt(enum.IntEnum):
    """How often the request has been sent again; each kind of retry happens at most once."""

    FIRST = 0
    REPLAYED = 1
    """Sent again on a fresh connection to the same instance (a pooled one died unused)."""
    MOVED = 2
    """Sent to another instance of the track (an idempotent request whose instance died)."""


# The same members as module names: on Python 3.11 reading `Phase.ANSWERED` calls the enum's
# descriptor (~70 ns against ~10 ns for a global, measured), and an exchange reads about a
# dozen of them per request.
WAITING, INTERIM, STREAMING, ANSWERED, FINISHED = (Phase.WAITING, Phase.INTERIM, Phase.STREAMING, Phase.ANSWERED,
                                                   Phase.FINISHED)
FIRST, REPLAYED, MOVED = Attempt.FIRST, Attempt.REPLAYED, Attempt.MOVED


class Plane(Protocol):
    """What an exchange needs from the proxy server (proxy_server.ProxyServer)."""

    service: str
    state: RouteState
    loop: asyncio.AbstractEventLoop | None
    clock: float
    response_timeout: float
    none_metrics: TrackMetrics
    tries: TryWatch

    def pump(self) -> None:
        """An instance's slot freed: dispatch the requests waiting for one."""


class Downstream(Protocol):
    """What an exchange needs from its client connection (client.ClientConnection). A Protocol,
    so that client -> exchange is the only import between the two."""

    server: Plane
    transport: asyncio.Transport | None
    proto: bytes
    """b"https" on a TLS listener, else b"http"."""
    paused: int
    write_paused: bool
    draining: bool
    outbox: Any
    """The listener's outbox.Outbox (Any: this module stays free of the connections' modules)."""

    def peer_bucket(self) -> int: ...

    def send(self, data: bytes) -> None:
        """Write to the client at the end of this loop iteration (outbox.py)."""

    def pause(self, why: int) -> None: ...

    def resume(self, why: int) -> None: ...

    def abort(self) -> None: ...

    def exchange_done(self, ex: Any) -> None:
        """`ex` is the Exchange that finished (Any: this module does not import exchange)."""
