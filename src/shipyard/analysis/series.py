"""The data the judges read: one track's counts for one second, and sums over a window.

The router reports per-second counts; keeping the second as the unit (rather than
rates) lets the sequential test condition on what actually happened in each second,
which is what makes it robust to traffic that rises and falls. Histograms use the
shared bucket scheme of `shipyard.histogram`, so bucket 57 means the same thing to
the router that counted and to the judge that reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shipyard import histogram


def _counts(latency: Mapping[Any, Any], what: str) -> dict[int, int]:
    """Histogram keys may arrive as strings (JSON objects); counts must be >= 0."""
    out: dict[int, int] = {}
    for key, value in latency.items():
        index, count = int(key), int(value)
        if not 0 <= index <= histogram.COUNT:
            raise ValueError(f"{what}: latency bucket {key!r} is outside 0..{histogram.COUNT}")
        if count < 0:
            raise ValueError(f"{what}: latency bucket {key!r} has a negative count ({count})")
        if count:
            out[index] = out.get(index, 0) + count
    return out


def _check_counts(requests: int, errors: int, what: str) -> None:
    if requests < 0 or errors < 0:
        raise ValueError(f"{what}: counts must be >= 0 (requests={requests}, errors={errors})")
    if errors > requests:
        raise ValueError(f"{what}: more errors ({errors}) than requests ({requests}); "
                         "errors must be counted among the requests")


@dataclass(frozen=True)
class Second:
    """One track, one wall-clock second, as the router reports it."""

    t: int
    """Unix second."""
    requests: int
    """Responses completed in that second (errors included)."""
    errors: int
    """5xx responses, connect failures and timeouts."""
    latency: Mapping[int, int] = field(default_factory=dict)
    """Histogram bucket index (shipyard.histogram) -> count."""

    def __post_init__(self) -> None:
        _check_counts(self.requests, self.errors, f"second {self.t}")
        object.__setattr__(self, "latency", _counts(self.latency, f"second {self.t}"))

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "requests": self.requests, "errors": self.errors,
                "latency": {str(k): v for k, v in sorted(self.latency.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Second:
        return cls(t=int(data["t"]), requests=int(data["requests"]), errors=int(data["errors"]),
                   latency=_counts(data.get("latency") or {}, f"second {data['t']}"))

    @classmethod
    def empty(cls, t: int) -> Second:
        """A second with no traffic (the router reports nothing for idle seconds)."""
        return cls(t=t, requests=0, errors=0, latency={})


@dataclass(frozen=True)
class Window:
    """Sums over a range of seconds of one track: what the fixed-window judges read."""

    requests: int = 0
    errors: int = 0
    latency: Mapping[int, int] = field(default_factory=dict)
    seconds: int = 0
    """How many seconds were summed (idle seconds included when the caller passes them)."""

    def __post_init__(self) -> None:
        _check_counts(self.requests, self.errors, "window")
        object.__setattr__(self, "latency", _counts(self.latency, "window"))

    @classmethod
    def of(cls, seconds: Iterable[Second]) -> Window:
        items = list(seconds)
        return cls(requests=sum(s.requests for s in items), errors=sum(s.errors for s in items),
                   latency=histogram.merge(s.latency for s in items), seconds=len(items))

    @property
    def error_rate(self) -> float | None:
        """errors / requests, or None without requests (no rate, not a zero rate)."""
        return self.errors / self.requests if self.requests else None

    @property
    def latency_count(self) -> int:
        """Requests with a recorded latency (may be fewer than `requests`: connect failures have none)."""
        return sum(self.latency.values())

    def quantile_ms(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (over-estimates by < 9 %), None without data."""
        return histogram.quantile_ms(self.latency, q)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "seconds": self.seconds,
                "latency": {str(k): v for k, v in sorted(self.latency.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(requests=int(data["requests"]), errors=int(data["errors"]),
                   latency=_counts(data.get("latency") or {}, "window"), seconds=int(data.get("seconds", 0)))
