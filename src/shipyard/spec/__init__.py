"""The vocabulary of shipyard: models of shipyard.yaml, loading with file:line errors, JSON Schema.

Nothing else of shipyard is imported here (only its errors), so every other package can
depend on the spec without cycles."""

from .durations import format_duration, parse_duration
from .load import SpecInvalid, load_spec, parse_spec
from .models import BuildSpec, DatabaseSpec, DriftSpec, HealthSpec, RouterSpec, RunSpec, Spec
from .schema import json_schema
from .strategy import (
    AnalysisSpec,
    AnalysisStep,
    AnalysisStepSpec,
    BlueGreenSpec,
    CanarySpec,
    CanaryStep,
    CompareToStableMetric,
    LatencyMetric,
    MetricCheck,
    MetricSpec,
    PauseSpec,
    PauseStep,
    PreviewCheck,
    PrometheusMetric,
    SetWeightStep,
    StickySpec,
    StrategySpec,
    SuccessRateMetric,
)

__all__ = [
    "AnalysisSpec",
    "AnalysisStep",
    "AnalysisStepSpec",
    "BlueGreenSpec",
    "BuildSpec",
    "CanarySpec",
    "CanaryStep",
    "CompareToStableMetric",
    "DatabaseSpec",
    "DriftSpec",
    "HealthSpec",
    "LatencyMetric",
    "MetricCheck",
    "MetricSpec",
    "PauseSpec",
    "PauseStep",
    "PreviewCheck",
    "PrometheusMetric",
    "RouterSpec",
    "RunSpec",
    "SetWeightStep",
    "Spec",
    "SpecInvalid",
    "StickySpec",
    "StrategySpec",
    "SuccessRateMetric",
    "format_duration",
    "json_schema",
    "load_spec",
    "parse_duration",
    "parse_spec",
]
