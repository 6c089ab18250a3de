"""Per-track and per-upstream counters kept by the data plane.

Two views of each track. The cumulative counters (`snapshot`, the `stats` op) are
since the router started: a reader takes differences. The per-second series (`series`,
the `series` op) is what the canary analysis judges: for each wall-clock second,
completed requests, errors and a sparse latency histogram in the shared
`shipyard.histogram` buckets, the last 600 seconds kept. The hot path only does
integer increments, one bisect and one dict update, with no locks: the data plane is
a single-threaded event loop."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from typing import Any

from shipyard.histogram import BOUNDS_MS

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds (inclusive) of the latency buckets; one more bucket counts the rest (+inf)."""

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

_COARSE = tuple(float(b) for b in LATENCY_BUCKETS_MS)
"""The same bounds as floats: a float latency bisects faster among floats than among ints."""
_EDGES = (0.0, *_COARSE, float("inf"))
FINE_RANGE: tuple[tuple[int, int], ...] = tuple(
    (bisect_left(BOUNDS_MS, _EDGES[c]) if c else 0, bisect_left(BOUNDS_MS, _EDGES[c + 1]))
    for c in range(len(_COARSE) + 1))
"""Per latency bucket, the slice of the shared histogram's bounds a latency in it can fall in:
the second bisect of a request looks only there (the same index, a third of the comparisons)."""

SERIES_SECONDS = 600
"""Completed seconds kept per track: enough for a long analysis step, bounded memory."""


class TrackMetrics:
    """What one track served: request count, status classes, router errors, latency, in-flight."""

    __slots__ = ("requests", "status", "errors", "aborted", "inflight", "queued", "queue_timeouts", "queue_full",
                 "counts", "sum_ms", "count", "sec", "sec_requests", "sec_errors", "sec_latency", "ring")

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
        self.queued = 0
        """Requests waiting now for a free instance of the track (also counted in `inflight`)."""
        self.queue_timeouts = 0
        """Requests answered 503 because they waited longer than queue_timeout."""
        self.queue_full = 0
        """Requests answered 503 at once because the track's queue was full."""
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.sum_ms = 0.0
        self.count = 0
        # The second being filled, then the completed ones (only seconds with traffic).
        self.sec = 0
        self.sec_requests = 0
        self.sec_errors = 0
        self.sec_latency = [0] * (len(BOUNDS_MS) + 1)
        """Counts per shared histogram bucket of the open second (made sparse when it closes)."""
        self.ring: deque[tuple[int, int, int, dict[int, int]]] = deque(maxlen=SERIES_SECONDS)

    def observe(self, status: int, ms: float, now: float | None = None) -> None:
        """Record one finished response: its status class, its latency, and its second
        (`now`, wall-clock; read here when not given). A status >= 500 is an error:
        the instance's 5xx, and the router's own 502/503/504 (failed connects, timeouts)."""
        cls = status // 100
        self.status[cls if 1 <= cls <= 5 else 5] += 1
        c = bisect_left(_COARSE, ms)
        self.counts[c] += 1
        self.sum_ms += ms
        self.count += 1
        sec = int(time.time() if now is None else now)
        if sec > self.sec:  # a clock stepped back keeps counting into the open second
            self._roll(sec)
        self.sec_requests += 1
        if status >= 500:
            self.sec_errors += 1
        # histogram.bucket_of at a fraction of the cost (a C bisect over its bounds); it differs only
        # for a latency within 1e-9 relative above a bound, which it puts in the next bucket, as the
        # bounds say
        lo, hi = FINE_RANGE[c]
        self.sec_latency[bisect_left(BOUNDS_MS, ms, lo, hi)] += 1

    def _roll(self, sec: int) -> None:
        """Close the open second (kept only if it saw traffic) and open `sec`."""
        if self.sec_requests:
            lat = self.sec_latency
            self.ring.append((self.sec, self.sec_requests, self.sec_errors, {b: n for b, n in enumerate(lat) if n}))
            self.sec_requests = self.sec_errors = 0
            self.sec_latency = [0] * len(lat)
        # by time too: idle seconds are not kept, so a track that serves every other switch
        # would otherwise hold far more than SERIES_SECONDS of seconds nobody can read
        while self.ring and self.ring[0][0] < sec - SERIES_SECONDS:
            self.ring.popleft()
        self.sec = sec

    def series(self, since: float, now: float) -> list[dict[str, Any]]:
        """Completed seconds t with since < t < int(now), ascending; a second with no
        completed request is omitted (read it as zero). Of the last SERIES_SECONDS only."""
        cur = int(now)
        if self.sec < cur:  # nothing can land in the open second any more: close it
            self._roll(cur)
        low = max(since, cur - SERIES_SECONDS - 1)
        return [{"t": t, "requests": n, "errors": e, "latency": {str(b): c for b, c in lat.items()}}
                for t, n, e, lat in self.ring if low < t < cur]

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status": {name: self.status[i + 1] for i, name in enumerate(STATUS_CLASSES)},
            "errors": self.errors,
            "aborted": self.aborted,
            "inflight": self.inflight,
            "queued": self.queued,
            "queue_timeouts": self.queue_timeouts,
            "queue_full": self.queue_full,
            "latency": {
                "buckets": [*LATENCY_BUCKETS_MS, "+inf"],
                "counts": list(self.counts),
                "sum_ms": round(self.sum_ms, 3),
                "count": self.count,
            },
        }


class UpstreamMetrics:
    """What one instance saw: requests sent to it, failed connects, silences, whether it is ejected."""

    __slots__ = ("requests", "inflight", "connect_failures", "silent", "ejected")

    def __init__(self) -> None:
        self.requests = 0
        self.inflight = 0
        """Requests holding one of the instance's max_conns_per_instance slots now."""
        self.connect_failures = 0
        self.silent = 0
        """Requests it left without a response head for per_try_timeout (sent elsewhere)."""
        self.ejected = False

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "inflight": self.inflight, "connect_failures": self.connect_failures,
                "silent": self.silent, "ejected": self.ejected}
