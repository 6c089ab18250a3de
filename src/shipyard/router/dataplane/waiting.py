"""The queue of one track: requests waiting for an instance below its in-flight limit.

HAProxy's per-server maxconn + queue: when every instance of a track carries
max_conns_per_instance requests, the next one waits here, first come first served, and
goes out the moment a slot frees (or a table swap brings instances). A full queue, or a
wait longer than queue_timeout, is a 503 that says so. Every entry waits the same
timeout, so the oldest expires first and one timer (for the head) serves the whole queue.
A request whose client left stays in the deque until it reaches the head (removing it
from the middle would cost O(n)), but it no longer counts."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from shipyard.router.dataplane.metrics import TrackMetrics


class Waiter(Protocol):
    """What the queue needs from a waiting request (exchange.Exchange)."""

    waiting_in: WaitingQueue | None
    queued_at: float

    def queue_expired(self, waited: float) -> None: ...


class WaitingQueue:
    """FIFO of waiters with a bound and a timeout; `count` is the live ones."""

    __slots__ = ("items", "count", "size", "timeout", "metrics", "timer")
    live = 0
    """Live waiters in every queue of the process: a freed slot looks for a waiter (the
    proxy's pump) only while there is one, not on every request."""

    def __init__(self, size: int, timeout: float, metrics: TrackMetrics) -> None:
        self.items: deque[Waiter] = deque()
        self.count = 0
        self.size = size
        self.timeout = timeout
        self.metrics = metrics
        self.timer: asyncio.TimerHandle | None = None

    def push(self, w: Waiter, loop: asyncio.AbstractEventLoop, force: bool = False) -> bool:
        """Queue `w` at the back; False when the queue is full (unless `force`: a request
        moved here by a table swap was already accepted into a queue and keeps its place in time)."""
        if self.count >= self.size and not force:
            return False
        self.items.append(w)
        self.count += 1
        WaitingQueue.live += 1
        self.metrics.queued += 1
        w.waiting_in = self
        if self.timer is None:
            self._arm(loop)
        return True

    def head(self) -> Waiter | None:
        """The oldest live waiter (requests whose client left are dropped on the way)."""
        items = self.items
        while items and items[0].waiting_in is not self:
            items.popleft()
        return items[0] if items else None

    def pop(self) -> Waiter:
        """Remove the head (call head() first): it is about to be dispatched."""
        w = self.items.popleft()
        self.forget(w)
        return w

    def forget(self, w: Waiter) -> None:
        """`w` leaves the queue (dispatched, or its client left); its deque entry may stay."""
        if w.waiting_in is self:
            w.waiting_in = None
            self.count -= 1
            WaitingQueue.live -= 1
            self.metrics.queued -= 1

    def take_all(self) -> list[Waiter]:
        """Empty the queue (a table swap re-routes every waiter), oldest first."""
        out = [w for w in self.items if w.waiting_in is self]
        for w in out:
            self.forget(w)
        self.items.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return out

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        head = self.head()
        if head is not None:
            self.timer = loop.call_at(head.queued_at + self.timeout, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = loop.time()
        while (w := self.head()) is not None and now - w.queued_at >= self.timeout - 0.001:
            self.pop()
            w.queue_expired(now - w.queued_at)
        self._arm(loop)
