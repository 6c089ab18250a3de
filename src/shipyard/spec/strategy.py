"""The rollout strategies of a spec: blue-green, and canary with its steps and analysis.

A strategy is pure configuration; the state machines in `rollout/` read it. Steps
and metrics are "exactly one key" mappings in YAML, modelled as distinct types in
Python so the controller can `match` on them."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .durations import DURATION_SCHEMA, Duration, PositiveDuration, validate_duration
from .values import (
    Bool,
    CookieName,
    EnvValue,
    Float,
    Fraction,
    HeaderName,
    HttpPath,
    MetricName,
    OpenFraction,
    SpecModel,
    Text,
    exactly_one,
    http_url,
    regex_check,
    show,
)

# -- blue-green -----------------------------------------------------------------------------------

class PreviewCheck(SpecModel):
    """A request sent to the new slot through the preview route before the switch."""

    path: HttpPath
    expect_status: Annotated[int, Strict(), Field(ge=100, le=599)] = 200
    expect_body_contains: str | None = None
    method: Annotated[str, StringConstraints(to_upper=True), regex_check(r"[A-Z]+", "HTTP method")] = "GET"
    headers: dict[HeaderName, EnvValue] = Field(default_factory=dict)


class BlueGreenSpec(SpecModel):
    """Start the new release beside the old one, check it, switch all traffic at once."""

    preview_checks: list[PreviewCheck] = Field(default_factory=list)
    auto_promote: Bool = True
    scale_down_delay: Duration = 600.0


# -- canary: steps --------------------------------------------------------------------------------

def _hundredths(value: float) -> float:
    """Users are hashed into 10,000 buckets, so a weight is a whole number of 0.01 %."""
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError(f"{show(value)} is finer than 0.01 (users are split into 10,000 buckets)")
    return round(value, 2)


class SetWeightStep(SpecModel):
    """Send this percent of users to the canary (0.01 to 100, in steps of 0.01)."""

    set_weight: Annotated[float, Strict(), Field(ge=0, le=100), AfterValidator(_hundredths)]


class PauseSpec(SpecModel):
    """How long a pause step holds the current weight."""

    duration: PositiveDuration | None = None
    """None: wait for `shipyard promote`."""


def _pause_forms(value: object, info: ValidationInfo) -> object:
    """`pause: {}` / `pause:` wait for promote; `pause: 30s` is short for `pause: {duration: 30s}`."""
    if value is None:
        return {}
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        seconds = validate_duration(value, info)
        if seconds <= 0:
            raise ValueError(f"{show(value)} is too short: must be longer than 0s")
        return PauseSpec.model_construct(duration=seconds)
    return value


class PauseStep(SpecModel):
    """Hold the current weight for a while, or until promoted."""

    pause: Annotated[PauseSpec, BeforeValidator(
        _pause_forms, json_schema_input_type=Annotated[str, WithJsonSchema(DURATION_SCHEMA)] | PauseSpec | None)]


class AnalysisStepSpec(SpecModel):
    """How long an analysis step watches the canary before moving on."""

    duration: PositiveDuration


class AnalysisStep(SpecModel):
    """Hold the current weight and judge the metrics for `duration`; fail means roll back."""

    analysis: AnalysisStepSpec


STEP_KINDS: dict[str, type[SpecModel]] = {"set_weight": SetWeightStep, "pause": PauseStep, "analysis": AnalysisStep}


def _check_step(value: object) -> object:
    """Each step is a one-key mapping; say so plainly instead of a union error."""
    if not isinstance(value, dict):
        return value
    unknown = [k for k in value if k not in STEP_KINDS]
    if unknown:
        raise ValueError(f"unknown step {show(unknown[0])} (expected one of: {', '.join(STEP_KINDS)})")
    if len(value) != 1:
        got = f"got {', '.join(value)}" if value else "got an empty mapping"
        raise ValueError(f"a step has exactly one key: {', '.join(STEP_KINDS)} ({got})")
    return value


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value), None)
    for kind, cls in STEP_KINDS.items():
        if isinstance(value, cls):
            return kind
    return None


CanaryStep = Annotated[
    Annotated[SetWeightStep, Tag("set_weight")] | Annotated[PauseStep, Tag("pause")]
    | Annotated[AnalysisStep, Tag("analysis")],
    Discriminator(_step_kind, custom_error_type="canary_step",
                  custom_error_message="expected a step like {set_weight: 10}, {pause: 30s} or {analysis: {duration: 60s}}"),
    BeforeValidator(_check_step),
]


# -- canary: analysis -----------------------------------------------------------------------------

class SuccessRateMetric(SpecModel):
    """The canary's share of successful requests must stay at or above `min`."""

    min: Fraction


class LatencyMetric(SpecModel):
    """The canary's latency at `quantile` must stay at or below `max`."""

    quantile: OpenFraction
    max: PositiveDuration


class CompareToStableMetric(SpecModel):
    """The canary must not be worse than the stable track by more than `tolerance` (relative)."""

    error_rate: Bool = True
    latency: Bool = True
    tolerance: Annotated[float, Strict(), Field(ge=0)] = 0.1
    latency_margin: Duration = 0.005
    """Latency differences up to this many seconds never count as a regression, whatever
    the tolerance says: between two instances of a fast service, tenths of a millisecond
    of jitter are real but not a regression."""

    @model_validator(mode="after")
    def _something_compared(self) -> CompareToStableMetric:
        if not (self.error_rate or self.latency):
            raise ValueError("compares nothing: set error_rate or latency to true")
        return self


class PrometheusMetric(SpecModel):
    """A PromQL query whose scalar result must stay within [min, max]."""

    query: Text
    min: Float | None = None
    max: Float | None = None
    address: Annotated[str, AfterValidator(http_url)] | None = None
    """None: the daemon's configured Prometheus."""

    @model_validator(mode="after")
    def _bounded(self) -> PrometheusMetric:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both: the bounds the query result must stay within")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


MetricCheck = SuccessRateMetric | LatencyMetric | CompareToStableMetric | PrometheusMetric
METRIC_KINDS = ("success_rate", "latency", "compare_to_stable", "prometheus")


class MetricSpec(SpecModel):
    """One named check; exactly one of the kinds is given."""

    name: MetricName
    success_rate: SuccessRateMetric | None = None
    latency: LatencyMetric | None = None
    compare_to_stable: CompareToStableMetric | None = None
    prometheus: PrometheusMetric | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> MetricSpec:
        exactly_one(self, METRIC_KINDS)
        return self

    @property
    def kind(self) -> str:
        return next(k for k in METRIC_KINDS if getattr(self, k) is not None)

    @property
    def check(self) -> MetricCheck:
        return getattr(self, self.kind)


def _default_metrics() -> list[MetricSpec]:
    return [MetricSpec(name="vs-stable", compare_to_stable=CompareToStableMetric())]


class AnalysisSpec(SpecModel):
    """Judges the canary during analysis steps and in the background for the whole rollout."""

    min_requests: Annotated[int, Strict(), Field(ge=1)] = 50
    alpha: OpenFraction = 0.05
    interval: PositiveDuration = 5.0
    metrics: Annotated[list[MetricSpec], Field(min_length=1)] = Field(default_factory=_default_metrics)

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, value: list[MetricSpec]) -> list[MetricSpec]:
        first: dict[str, int] = {}
        for i, metric in enumerate(value):
            if metric.name in first:
                raise ValueError(f"metric name {show(metric.name)} is used by items {first[metric.name]} and {i}; "
                                 "names must be unique")
            first[metric.name] = i
        return value


class StickySpec(SpecModel):
    """How a user is recognised so they stay on one track as the weight rises: the header,
    else the cookie, else (unless turned off) the client address. A request with no key
    is drawn anew."""

    header: HeaderName | None = None
    cookie: CookieName | None = None
    client_address: Bool = True


def _replicas_form(value: object) -> object:
    if value == "auto":
        return None
    return value


class CanarySpec(SpecModel):
    """Shift traffic to the new release step by step, judging it against the stable one."""

    sticky: StickySpec = Field(default_factory=StickySpec)
    replicas: Annotated[Annotated[int, Strict(), Field(ge=1, le=64)] | None, BeforeValidator(_replicas_form),
                        WithJsonSchema({"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]})] = None
    """Canary instances: "auto" (default) scales with the weight, at least one; or a fixed count."""
    steps: Annotated[list[CanaryStep], Field(min_length=1)]
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    baseline: bool = False
    """Judge the canary against a baseline: fresh instances of the stable release, started with
    the canary and taking as many users, so age and per-instance load do not tell them apart."""

    def canary_instances(self, weight: float, replicas: int) -> int:
        """How many canary instances carry `weight` percent of a service of `replicas`."""
        if self.replicas is not None:
            return self.replicas
        return max(1, min(replicas, math.ceil(replicas * weight / 100 - 1e-9)))


# -- strategy, database, router -------------------------------------------------------------------

class StrategySpec(SpecModel):
    """Exactly one of blue_green / canary."""

    blue_green: BlueGreenSpec | None = None
    canary: CanarySpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        """`blue_green:` with nothing under it means "blue-green with defaults"."""
        if isinstance(data, dict) and len(data) == 1 and all(v is None for v in data.values()):
            return {k: {} for k in data}
        return data

    @model_validator(mode="after")
    def _one_strategy(self) -> StrategySpec:
        exactly_one(self, ("blue_green", "canary"))
        return self

    @property
    def kind(self) -> Literal["blue_green", "canary"]:
        return "blue_green" if self.blue_green is not None else "canary"
