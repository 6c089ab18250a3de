"""Per-try timeouts: an idempotent request whose instance stays silent is sent elsewhere.

Envoy's per_try_timeout. A hung instance (stopped, deadlocked) still completes TCP
handshakes and takes requests into its socket buffer, so without this every request
sent to it waits for the overall response timeout. The watch is one FIFO for the
whole data plane: every try waits the same per_try_timeout, so the oldest expires
first and one timer (for the head) replaces a timer per request. An entry whose
exchange got an answer meanwhile is simply dropped when it comes up."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol


class Try(Protocol):
    """What the watch needs from an exchange (exchange.Exchange)."""

    def try_expired(self, conn: Any) -> None:
        """`conn` is the upstream connection the try was sent on; a no-op if it is no longer current."""


class TryWatch:
    __slots__ = ("items", "timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: deque[tuple[float, Try, Any]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.loop = loop

    def watch(self, ex: Try, conn: Any, timeout: float) -> None:
        """Call ex.try_expired(conn) in `timeout` seconds (it checks whether it still matters)."""
        self.items.append((self.loop.time() + timeout, ex, conn))
        if self.timer is None:
            self.timer = self.loop.call_at(self.items[0][0], self._expire)

    def _expire(self) -> None:
        self.timer = None
        now = self.loop.time() + 0.001
        items = self.items
        while items and items[0][0] <= now:
            _, ex, conn = items.popleft()
            ex.try_expired(conn)
        if items:
            self.timer = self.loop.call_at(items[0][0], self._expire)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.items.clear()
