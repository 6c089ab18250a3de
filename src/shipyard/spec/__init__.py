"""The vocabulary of shipyard: models of shipyard.yaml, loading with file:line errors, JSON Schema.

Nothing else of shipyard is imported here (only its errors), so every other package can
depend on the spec without cycles."""

from .advice import looks_secret, spec_warnings
from .bounded import MAX_SPEC_BYTES, SpecTooLarge
from .durations import format_duration, parse_duration
from .fleet import BatchSpec, FleetSpec, HostSpec, PlacementSpec, SshSpec
from .load import SpecInvalid, load_spec, parse_spec
from .models import (
    BuildSpec,
    DatabaseSpec,
    DriftSpec,
    HealthSpec,
    RouterSpec,
    RunSpec,
    Spec,
    TlsSpec,
    without_location,
)
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
from .values import SERVICE_NAME_PATTERN, is_service_name

__all__ = [
    "AnalysisSpec",
    "AnalysisStep",
    "AnalysisStepSpec",
    "BatchSpec",
    "BlueGreenSpec",
    "BuildSpec",
    "CanarySpec",
    "CanaryStep",
    "CompareToStableMetric",
    "DatabaseSpec",
    "DriftSpec",
    "FleetSpec",
    "HealthSpec",
    "HostSpec",
    "MAX_SPEC_BYTES",
    "LatencyMetric",
    "MetricCheck",
    "MetricSpec",
    "PauseSpec",
    "PauseStep",
    "PlacementSpec",
    "PreviewCheck",
    "PrometheusMetric",
    "RouterSpec",
    "RunSpec",
    "SERVICE_NAME_PATTERN",
    "SetWeightStep",
    "Spec",
    "SpecInvalid",
    "SpecTooLarge",
    "SshSpec",
    "StickySpec",
    "StrategySpec",
    "SuccessRateMetric",
    "TlsSpec",
    "format_duration",
    "is_service_name",
    "json_schema",
    "load_spec",
    "looks_secret",
    "parse_duration",
    "parse_spec",
    "spec_warnings",
    "without_location",
]
