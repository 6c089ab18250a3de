"""What a metric query is about: the value type shared by the canary judge (engine/) and
the metric providers, kept pure so the engine never imports a provider to name it."""

from __future__ import annotations

from dataclasses import dataclass

RELEASE_LABEL_LENGTH = 12
"""Releases are labelled by the first 12 hex digits of their image id, as on shipyard's /metrics."""


@dataclass(frozen=True)
class QueryContext:
    """What a query's `{{...}}` placeholders stand for, for one canary rollout. Tracks are
    slot names and releases short image ids: the `track` / `release` labels of shipyard's
    own /metrics, so a query over shipyard's series needs no translation."""

    service: str
    canary_slot: str
    stable_slot: str
    canary_image: str | None
    stable_image: str | None
    interval: float
    """The analysis interval in seconds, offered as a PromQL duration for rate() windows."""

    def variables(self) -> dict[str, str | None]:
        return {"service": self.service, "track": self.canary_slot, "stable_track": self.stable_slot,
                "release": _short(self.canary_image), "stable_release": _short(self.stable_image),
                "interval": promql_duration(self.interval)}


def _short(image_id: str | None) -> str | None:
    return image_id[:RELEASE_LABEL_LENGTH] if image_id else None


def promql_duration(seconds: float) -> str:
    """5.0 -> '5s', 1.5 -> '1500ms': PromQL durations take whole numbers only."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"
