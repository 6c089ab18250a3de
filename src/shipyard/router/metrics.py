"""Per-track and per-upstream counters kept by the data plane.

They are read by the controller's analysis (is the canary worse than stable?), so
they are cumulative since the router started: the reader takes differences. The
hot path only does integer increments and one bisect, with no locks: the data
plane is a single-threaded event loop."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds (inclusive) of the latency buckets; one more bucket counts the rest (+inf)."""

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class TrackMetrics:
    """What one track served: request count, status classes, router errors, latency, in-flight."""

    __slots__ = ("requests", "status", "errors", "aborted", "inflight", "counts", "sum_ms", "count")

    def __init__(self) -> None:
        self.requests = 0
        self.status = [0, 0, 0, 0, 0, 0]  # index = status // 100; index 0 unused
        self.errors = 0
        """Responses the router generated itself (502/503/504) or cut short because the instance
        broke mid-response; they are also counted in `status` (as 5xx)."""
        self.aborted = 0
        """Requests whose client left before the response was complete (no status recorded):
        requests == sum(status) + aborted + inflight."""
        self.inflight = 0
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.sum_ms = 0.0
        self.count = 0

    def observe(self, status: int, ms: float) -> None:
        """Record one finished response: its status class and its latency."""
        cls = status // 100
        self.status[cls if 1 <= cls <= 5 else 5] += 1
        self.counts[bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self.sum_ms += ms
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status": {name: self.status[i + 1] for i, name in enumerate(STATUS_CLASSES)},
            "errors": self.errors,
            "aborted": self.aborted,
            "inflight": self.inflight,
            "latency": {
                "buckets": [*LATENCY_BUCKETS_MS, "+inf"],
                "counts": list(self.counts),
                "sum_ms": round(self.sum_ms, 3),
                "count": self.count,
            },
        }


class UpstreamMetrics:
    """What one instance saw: requests sent to it, failed connects, whether it is ejected."""

    __slots__ = ("requests", "connect_failures", "ejected")

    def __init__(self) -> None:
        self.requests = 0
        self.connect_failures = 0
        self.ejected = False

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "connect_failures": self.connect_failures,
                "ejected": self.ejected}
