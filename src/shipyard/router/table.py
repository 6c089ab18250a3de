"""The routing table: which instances make up each track and how traffic is split.

A value object shared by the controller (which builds it) and the data plane (which
serves it). It is swapped whole, never edited, so a request always sees one
consistent version."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

TRACK_HEADER = "x-shipyard-track"
"""A request carrying this header goes to the named track (preview / overrides)."""


@dataclass(frozen=True)
class Upstream:
    id: str
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class RoutingTable:
    service: str
    version: int = 0
    tracks: dict[str, tuple[Upstream, ...]] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    """Percent of unpinned traffic per track; sums to 100, or is empty (no live track: 503)."""
    sticky_header: str | None = None
    """Requests with this header keep their track across weight changes (canary)."""
    sticky_cookie: str | None = None

    def __post_init__(self) -> None:
        for name, w in self.weights.items():
            if name not in self.tracks:
                raise ValueError(f"weight given for unknown track {name!r}")
            if not 0 <= w <= 100:
                raise ValueError(f"weight of track {name!r} must be 0..100, got {w}")
        if self.weights and sum(self.weights.values()) != 100:
            raise ValueError(f"track weights must add up to 100, got {sum(self.weights.values())}")

    # -- choosing ---------------------------------------------------------------

    def track_for(self, override: str | None = None, user_key: str | None = None,
                  rnd: random.Random | None = None) -> str | None:
        """The track a request goes to: an explicit override wins, then the user's
        stable bucket, then a weighted random draw. None when nothing can serve."""
        if override is not None and override in self.tracks:
            return override
        live = [(t, w) for t, w in self.weights.items() if w > 0]
        if not live:
            return None
        if len(live) == 1:
            return live[0][0]
        point = bucket(user_key) if user_key else (rnd or random).random() * 100.0
        acc = 0.0
        for name, w in sorted(live):
            acc += w
            if point < acc:
                return name
        return sorted(live)[-1][0]

    def with_weights(self, weights: dict[str, int]) -> RoutingTable:
        return RoutingTable(self.service, self.version + 1, dict(self.tracks), dict(weights),
                            self.sticky_header, self.sticky_cookie)

    @property
    def serving(self) -> list[str]:
        """Tracks that receive unpinned traffic."""
        return sorted(t for t, w in self.weights.items() if w > 0)

    # -- wire format -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "tracks": {t: [{"id": u.id, "host": u.host, "port": u.port} for u in ups]
                       for t, ups in self.tracks.items()},
            "weights": dict(self.weights),
            "sticky_header": self.sticky_header,
            "sticky_cookie": self.sticky_cookie,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoutingTable:
        return cls(
            service=str(d["service"]),
            version=int(d.get("version", 0)),
            tracks={str(t): tuple(Upstream(str(u["id"]), str(u["host"]), int(u["port"])) for u in ups)
                    for t, ups in (d.get("tracks") or {}).items()},
            weights={str(t): int(w) for t, w in (d.get("weights") or {}).items()},
            sticky_header=d.get("sticky_header"),
            sticky_cookie=d.get("sticky_cookie"),
        )


def bucket(user_key: str) -> float:
    """A user's stable position in [0, 100): the same user always lands on the same
    side of a weight split, and raising the weight only moves users one way."""
    h = hashlib.blake2b(user_key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 * 100.0
