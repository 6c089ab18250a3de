"""What a judge says about one metric, with the numbers that decided it.

Verdicts are stored with the rollout and shown to people, so each carries one
plain sentence (`detail`) and the raw figures (`evidence`) that sentence was
written from: an abort must be explainable after the fact."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

Status = Literal["successful", "failed", "inconclusive"]
STATUSES: tuple[Status, ...] = ("successful", "failed", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """One judge's finding on one metric of the spec."""

    metric: str
    """The spec's metric name (e.g. "vs-stable")."""
    kind: str
    """Which judge: success_rate, latency, error_rate_vs_stable, latency_vs_stable,
    sequential_error_rate, sequential_latency_p50, sequential_latency_p90, prometheus."""
    status: Status
    value: float | None
    """The measured figure the threshold applies to (rate, ms, p-value or e-value; see `kind`)."""
    threshold: float | None
    samples: int
    """Canary requests (or latency observations) the finding rests on."""
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status {self.status!r} is not one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "kind": self.kind, "status": self.status,
                "value": _json_float(self.value), "threshold": _json_float(self.threshold),
                "samples": self.samples, "detail": self.detail, "evidence": dict(self.evidence)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(metric=str(data["metric"]), kind=str(data["kind"]), status=cast(Status, data["status"]),
                   value=_float_or_none(data.get("value")), threshold=_float_or_none(data.get("threshold")),
                   samples=int(data.get("samples", 0)), detail=str(data.get("detail", "")),
                   evidence=dict(data.get("evidence") or {}))


def overall(verdicts: Iterable[Verdict]) -> Status:
    """Any failed -> failed; all successful -> successful; otherwise (or none) inconclusive."""
    statuses = [v.status for v in verdicts]
    if "failed" in statuses:
        return "failed"
    if statuses and all(s == "successful" for s in statuses):
        return "successful"
    return "inconclusive"


def _json_float(x: float | None) -> float | str | None:
    """JSON has no infinity; keep it readable as a string rather than invalid JSON."""
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


# -- wording shared by the judges: numbers people can read in one glance ----------------------------

def pct(x: float) -> str:
    """0.1034 -> '10.3%', 0.09 -> '9.00%', 0.00123 -> '0.123%': never '0.0%' for a non-zero rate."""
    value = 100 * x
    if value == 0 or value >= 10:
        return f"{value:.1f}%"
    return f"{value:#.3g}%"


def num(x: float) -> str:
    """An e-value or p-value: 0.31, 20, 2.1e3, 4.2e-5."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if 1e-3 <= abs(x) < 1e3:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def ms(x: float) -> str:
    if not math.isfinite(x):
        return "inf ms"
    return f"{x:.3g} ms" if x < 1000 else f"{x:.0f} ms"


def rate(events: int, total: int) -> str:
    """'10.3% (31/301)', or 'n/a (0/0)' without data."""
    return f"{pct(events / total)} ({events}/{total})" if total else f"n/a ({events}/{total})"
