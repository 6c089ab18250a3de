"""The routing table: which instances make up each track and how traffic is split.

A value object shared by the controller (which builds it) and the data plane (which
serves it). It is swapped whole, never edited, so a request always sees one
consistent version.

Traffic is split between *users*, not requests: a user's key (sticky header, else
cookie, else client address) hashes to one of 10,000 buckets, and the tracks of
`bucket_order` own consecutive bucket ranges from bucket 0 up. The canary comes
first, so raising its weight only moves users from stable to canary, never back and
forth. A request with no key draws a random bucket (a weighted choice per request)."""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Any

from shipyard.errors import RouterError

TRACK_HEADER = "x-shipyard-track"
"""A request carrying this header goes to the named track (or alias): previews and overrides."""

PREVIEW_TOKEN_HEADER = "x-shipyard-preview-token"
"""TRACK_HEADER is honoured only when this header carries the service's `preview_token`."""

BUCKETS = 10_000
"""Users are hashed into this many buckets, so a weight is a whole number of 0.01 %."""

DEFAULT_MAX_CONNS = 64
DEFAULT_QUEUE_SIZE = 4096
DEFAULT_QUEUE_TIMEOUT = 5.0
"""The defaults of the spec's `router` section (spec/models.py RouterSpec says why), also what a
table persisted before these limits existed is served with."""


class TableError(RouterError, ValueError):
    """A routing table that cannot be served. A ValueError too, so wire-format readers
    that already treat ValueError as "invalid table" keep doing so."""


@dataclass(frozen=True)
class Upstream:
    id: str
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class TableTls:
    """The certificate the listener serves: files the daemon installed (checked, 0600, named by
    fingerprint) and the fingerprint, which the data plane checks the file against. A table
    whose fingerprint differs from the served one makes the router build a new SSLContext
    for new connections; connections already open keep theirs."""

    cert: str
    key: str
    fingerprint: str

    def __post_init__(self) -> None:
        for name in ("cert", "key"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.startswith("/"):
                raise TableError(f"tls.{name} must be an absolute path, got {v!r}")
        fp = self.fingerprint
        if not (isinstance(fp, str) and len(fp) == 64 and all(c in "0123456789abcdef" for c in fp)):
            raise TableError(f"tls.fingerprint must be 64 lower-case hex digits (SHA-256), got {fp!r}")

    def to_dict(self) -> dict[str, str]:
        return {"cert": self.cert, "key": self.key, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: Any) -> TableTls | None:
        if d is None:
            return None
        if not isinstance(d, dict):
            raise TableError(f"tls must be an object with cert, key and fingerprint, got {d!r}")
        return cls(d.get("cert"), d.get("key"), d.get("fingerprint"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class RoutingTable:
    service: str
    version: int = 0
    tracks: dict[str, tuple[Upstream, ...]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    """Percent of users per track, in steps of 0.01; sums to 100, or is empty (no live track: 503)."""
    sticky_header: str | None = None
    """A request's value of this header is its user key (canary stickiness)."""
    sticky_cookie: str | None = None
    """Else the value of this cookie."""
    sticky_client_address: bool = False
    """Else, when true, the client's TCP peer address (never X-Forwarded-For, which clients forge)."""
    bucket_order: tuple[str, ...] = ()
    """Which track takes the lowest buckets, then the next, ...: the canary first. Tracks
    with weight left out of it follow in name order."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Override names for tracks, e.g. {"canary": "green", "stable": "blue"}."""
    releases: dict[str, str] = field(default_factory=dict)
    """The image each track serves. A track's counters start again when its release changes,
    so what /metrics reports under a release was served by that release."""
    preview_token: str | None = field(default=None, repr=False)
    """The secret a request must carry (X-Shipyard-Preview-Token) for its X-Shipyard-Track to be
    honoured; None: forced-track routing is off. The daemon derives it per service."""
    max_conns_per_instance: int = DEFAULT_MAX_CONNS
    """Requests in flight per instance; more wait in their track's queue."""
    queue_size: int = DEFAULT_QUEUE_SIZE
    """Requests that may wait per track; beyond, 503 at once (0: none wait)."""
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    """Seconds a request may wait in the queue before it is answered 503."""
    per_try_timeout: float = 0.0
    """Seconds an instance has to start answering an idempotent request before it is sent once to
    another instance of the track; 0: off."""
    tls: TableTls | None = None
    """Terminate TLS on the listener with this certificate; None: plain HTTP."""
    _slices: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False, default=())
    """(track, end bucket) in bucket order, weight > 0 only: computed once per table."""

    def __post_init__(self) -> None:
        tok = self.preview_token
        if tok is not None and not (tok.isascii() and tok.isprintable() and " " not in tok and tok):
            raise TableError("preview_token must be non-empty visible ASCII (it is compared to a header value)")
        _validate_limits(self)
        units = _validate_weights(self.weights, self.tracks)
        object.__setattr__(self, "weights", {t: u / 100 for t, u in units.items()})
        order = tuple(self.bucket_order)
        object.__setattr__(self, "bucket_order", order)
        for name in order:
            if name not in self.tracks:
                raise TableError(f"bucket_order names unknown track {name!r} (tracks: {_names(self.tracks)})")
        if len(set(order)) != len(order):
            raise TableError(f"bucket_order lists a track twice: {list(order)}")
        for alias, target in self.aliases.items():
            if alias in self.tracks:
                raise TableError(f"alias {alias!r} is also a track name: rename the alias")
            if target not in self.tracks:
                raise TableError(f"alias {alias!r} points to unknown track {target!r} "
                                 f"(tracks: {_names(self.tracks)})")
        for track in self.releases:
            if track not in self.tracks:
                raise TableError(f"release given for unknown track {track!r} (tracks: {_names(self.tracks)})")
        full = order + tuple(sorted(t for t in units if t not in order))
        slices, end = [], 0
        for name in full:
            if units.get(name, 0) > 0:
                end += units[name]
                slices.append((name, end))
        object.__setattr__(self, "_slices", tuple(slices))

    # -- choosing ---------------------------------------------------------------

    def track_for(self, override: str | None = None, user_key: str | bytes | None = None,
                  rnd: random.Random | None = None) -> str | None:
        """The track a request goes to: an explicit override (track or alias) wins, then the
        user's bucket, then a random bucket. None when nothing can serve."""
        if override is not None:
            if override in self.tracks:
                return override
            if override in self.aliases:
                return self.aliases[override]
        if not self._slices:
            return None
        b = user_bucket(user_key) if user_key else (rnd or random).randrange(BUCKETS)
        return self.track_at(b)

    def track_at(self, bucket: int) -> str | None:
        """The track that owns a bucket (0..9999)."""
        slices = self._slices
        if not slices:
            return None
        i = bisect_right([end for _, end in slices], bucket)
        return slices[min(i, len(slices) - 1)][0]

    def bucket_ranges(self) -> list[tuple[str, int, int]]:
        """(track, first bucket, end bucket exclusive) of every track with users, in bucket order."""
        out, start = [], 0
        for name, end in self._slices:
            out.append((name, start, end))
            start = end
        return out

    def with_weights(self, weights: dict[str, float]) -> RoutingTable:
        return replace(self, version=self.version + 1, tracks=dict(self.tracks), weights=dict(weights),
                       aliases=dict(self.aliases), releases=dict(self.releases), tls=self.tls)

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
            "sticky_client_address": self.sticky_client_address,
            "bucket_order": list(self.bucket_order),
            "aliases": dict(self.aliases),
            "releases": dict(self.releases),
            "preview_token": self.preview_token,
            "max_conns_per_instance": self.max_conns_per_instance,
            "queue_size": self.queue_size,
            "queue_timeout": self.queue_timeout,
            "per_try_timeout": self.per_try_timeout,
            "tls": self.tls.to_dict() if self.tls else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoutingTable:
        """Tables persisted by older routers (no order, aliases, address stickiness, releases or
        overload limits, or TLS) load too, with the defaults."""
        return cls(
            service=str(d["service"]),
            version=int(d.get("version", 0)),
            tracks={str(t): tuple(Upstream(str(u["id"]), str(u["host"]), int(u["port"])) for u in ups)
                    for t, ups in (d.get("tracks") or {}).items()},
            weights={str(t): w for t, w in (d.get("weights") or {}).items()},
            sticky_header=d.get("sticky_header"),
            sticky_cookie=d.get("sticky_cookie"),
            sticky_client_address=bool(d.get("sticky_client_address", False)),
            bucket_order=tuple(str(t) for t in d.get("bucket_order") or ()),
            aliases={str(a): str(t) for a, t in (d.get("aliases") or {}).items()},
            releases={str(t): str(r) for t, r in (d.get("releases") or {}).items()},
            preview_token=str(d["preview_token"]) if d.get("preview_token") else None,
            max_conns_per_instance=d.get("max_conns_per_instance", DEFAULT_MAX_CONNS),
            queue_size=d.get("queue_size", DEFAULT_QUEUE_SIZE),
            queue_timeout=d.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT),
            per_try_timeout=d.get("per_try_timeout", 0.0),
            tls=TableTls.from_dict(d.get("tls")),
        )


def user_bucket(user_key: str | bytes) -> int:
    """A user's bucket (0..9999): stable across processes and releases, and the same in both
    data planes: CRC-32 (the Ethernet/zlib one) of the key's bytes, modulo 10,000, is what
    HAProxy 2.6 computes with `crc32,mod(10000)` (it has no blake2b; sha2 would cost more per
    request for nothing here). Not a secret or collision-resistant hash: a user picks their own
    key anyway. Over 100,000 keys (sequential names, IPv4 addresses, random hex) its buckets
    are as uniform as SHA-256's (chi-squared ~ degrees of freedom at 100 and 10,000 bins). A
    str key is hashed as its UTF-8 bytes, which is what the data plane sees on the wire."""
    if isinstance(user_key, str):
        user_key = user_key.encode("utf-8", "surrogateescape")
    return zlib.crc32(user_key) % BUCKETS


def _validate_limits(t: RoutingTable) -> None:
    """The overload limits as the spec allows them; TableError naming the field otherwise."""
    for name, low in (("max_conns_per_instance", 1), ("queue_size", 0)):
        v = getattr(t, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise TableError(f"{name} must be a whole number >= {low}, got {v!r}")
    for name in ("queue_timeout", "per_try_timeout"):
        v = getattr(t, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
            raise TableError(f"{name} must be a number of seconds >= 0, got {v!r}")
    if t.queue_timeout <= 0:
        raise TableError(f"queue_timeout must be longer than 0s, got {t.queue_timeout!r}")


def _validate_weights(weights: dict[str, Any], tracks: dict[str, Any]) -> dict[str, int]:
    """Weights as whole hundredths of a percent; TableError saying what to fix otherwise."""
    units: dict[str, int] = {}
    for name, w in weights.items():
        if name not in tracks:
            raise TableError(f"weight given for unknown track {name!r} (tracks: {_names(tracks)})")
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 100:
            raise TableError(f"weight of track {name!r} must be a percent from 0 to 100, got {w!r}")
        u = round(w * 100)
        if abs(w * 100 - u) > 1e-6:
            raise TableError(f"weight {w:g} of track {name!r} is finer than 0.01 (users are split into "
                             f"{BUCKETS:,} buckets): use a multiple of 0.01")
        units[name] = u
    if units and sum(units.values()) != BUCKETS:
        shown = ", ".join(f"{t}={u / 100:g}" for t, u in sorted(units.items()))
        raise TableError(f"track weights must add up to 100, got {sum(units.values()) / 100:g} ({shown})")
    return units


def _names(tracks: dict[str, Any]) -> str:
    return ", ".join(sorted(tracks)) or "none"
