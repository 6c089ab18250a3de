"""The map files that carry a routing table into HAProxy, three per service, swapped atomically
through the Runtime API (`prepare map` / `add map @v` / `commit map @v`):

- `<service>.buckets.map` (map_int): "first:last" bucket range -> track, so a request's track
  is the one owning its user's bucket, exactly RoutingTable.track_at;
- `<service>.tracks.map` (map_str): track or alias -> track, for X-Shipyard-Track;
- `<service>.token.map` (map_str): "token" -> the preview token, compared in constant time
  (secure_memcmp) with X-Shipyard-Preview-Token; no entry: overrides are off."""

from __future__ import annotations

from collections.abc import Iterable

from shipyard.router.table import RoutingTable


def bucket_entries(table: RoutingTable) -> list[tuple[str, str]]:
    """`first:last` (inclusive) -> track, for every track with users."""
    return [(f"{first}:{end - 1}", name) for name, first, end in table.bucket_ranges()]


def track_entries(table: RoutingTable) -> list[tuple[str, str]]:
    return [*((t, t) for t in sorted(table.tracks)), *sorted(table.aliases.items())]


def token_entries(table: RoutingTable) -> list[tuple[str, str]]:
    return [("token", table.preview_token)] if table.preview_token else []


MAP_KINDS = ("tracks", "token", "buckets")
"""In the order they are committed: the bucket map, which moves users, last."""


def map_entries(table: RoutingTable) -> dict[str, list[tuple[str, str]]]:
    return {"tracks": track_entries(table), "token": token_entries(table), "buckets": bucket_entries(table)}


def map_text(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{k} {v}\n" for k, v in entries)
