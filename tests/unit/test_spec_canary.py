"""Canary strategy: the step forms, sticky users, analysis and its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.spec import (
    AnalysisStep,
    CanarySpec,
    CompareToStableMetric,
    LatencyMetric,
    PauseSpec,
    PauseStep,
    PrometheusMetric,
    SetWeightStep,
    SpecInvalid,
    SuccessRateMetric,
    parse_spec,
)
from shipyard.spec.strategy import StickySpec

BASE = """\
service: shop
listen: 127.0.0.1:8080
run:
  command: [python, app.py]
strategy:
  canary:
"""


def canary(body: str) -> CanarySpec:
    text = BASE + "".join(f"    {line}\n" for line in body.splitlines())
    spec = parse_spec(text, "shop.yaml", Path("/tmp"))
    assert spec.strategy.kind == "canary" and spec.strategy.blue_green is None
    assert spec.strategy.canary is not None
    return spec.strategy.canary


def problems(body: str) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        canary(body)
    return info.value.problems


def test_every_step_form() -> None:
    spec = canary("""\
steps:
  - set_weight: 0
  - pause: 30s
  - set_weight: 100
  - pause: {duration: 1m30s}
  - pause: {}
  - pause:
  - analysis: {duration: 60s}""")
    assert spec.steps == [
        SetWeightStep(set_weight=0),
        PauseStep(pause=PauseSpec(duration=30.0)),
        SetWeightStep(set_weight=100),
        PauseStep(pause=PauseSpec(duration=90.0)),
        PauseStep(pause=PauseSpec(duration=None)),
        PauseStep(pause=PauseSpec()),
        AnalysisStep(analysis={"duration": 60.0}),  # type: ignore[arg-type]
    ]
    kinds = []
    for step in spec.steps:
        match step:
            case SetWeightStep(set_weight=w):
                kinds.append(f"w{w:g}")
            case PauseStep(pause=PauseSpec(duration=None)):
                kinds.append("until-promote")
            case PauseStep(pause=p):
                kinds.append(f"pause{p.duration:g}")
            case AnalysisStep(analysis=a):
                kinds.append(f"analysis{a.duration:g}")
    assert kinds == ["w0", "pause30", "w100", "pause90", "until-promote", "until-promote", "analysis60"]


def test_defaults() -> None:
    spec = canary("steps: [{set_weight: 10}]")
    assert spec.sticky == StickySpec(header=None, cookie=None, client_address=True)   # users by client address
    assert spec.replicas is None and spec.canary_instances(5, 4) == 1 and spec.canary_instances(50, 4) == 2
    assert (spec.analysis.min_requests, spec.analysis.alpha, spec.analysis.interval) == (50, 0.05, 5.0)
    assert [(m.name, m.kind) for m in spec.analysis.metrics] == [("vs-stable", "compare_to_stable")]
    assert spec.analysis.metrics[0].check == CompareToStableMetric(error_rate=True, latency=True, tolerance=0.1)


def test_sticky_and_metrics() -> None:
    spec = canary("""\
sticky: {header: X-User-Id, cookie: uid}
steps: [{set_weight: 1}]
analysis:
  min_requests: 20
  alpha: 0.01
  interval: 500ms
  metrics:
    - {name: success, success_rate: {min: 0.99}}
    - {name: p99, latency: {quantile: 0.99, max: 500ms}}
    - {name: vs-stable, compare_to_stable: {error_rate: true, latency: false, tolerance: 0.25}}
    - {name: prom, prometheus: {query: 'sum(rate(x[1m]))', max: 5, address: "http://127.0.0.1:9090"}}""")
    assert spec.sticky is not None and (spec.sticky.header, spec.sticky.cookie) == ("X-User-Id", "uid")
    assert (spec.analysis.min_requests, spec.analysis.alpha, spec.analysis.interval) == (20, 0.01, 0.5)
    checks = {m.name: m.check for m in spec.analysis.metrics}
    assert checks == {
        "success": SuccessRateMetric(min=0.99),
        "p99": LatencyMetric(quantile=0.99, max=0.5),
        "vs-stable": CompareToStableMetric(error_rate=True, latency=False, tolerance=0.25),
        "prom": PrometheusMetric(query="sum(rate(x[1m]))", max=5.0, address="http://127.0.0.1:9090"),
    }


def test_step_shape_errors() -> None:
    assert problems("""\
steps:
  - set_weight: 101
  - {set_weight: 5, pause: {}}
  - foo: 1
  - {}
  - 5
  - pause: 30
  - pause: {duration: 0s}
  - pause: {until: promote}
  - set_weight: "5"
""") == [
        "shop.yaml:8 strategy.canary.steps[0].set_weight: must be at most 100, got 101",
        "shop.yaml:9 strategy.canary.steps[1]: a step has exactly one key: set_weight, pause, analysis "
        "(got set_weight, pause)",
        'shop.yaml:10 strategy.canary.steps[2]: unknown step "foo" (expected one of: set_weight, pause, analysis)',
        "shop.yaml:11 strategy.canary.steps[3]: a step has exactly one key: set_weight, pause, analysis "
        "(got an empty mapping)",
        "shop.yaml:12 strategy.canary.steps[4]: expected a step like {set_weight: 10}, {pause: 30s} or "
        "{analysis: {duration: 60s}}; got 5",
        "shop.yaml:13 strategy.canary.steps[5].pause: 30 is a bare number; durations need a unit "
        "(write 30s, not 30)",
        "shop.yaml:14 strategy.canary.steps[6].pause.duration: 0s is too short: must be longer than 0s",
        "shop.yaml:15 strategy.canary.steps[7].pause.until: unknown key (expected one of: duration)",
        'shop.yaml:16 strategy.canary.steps[8].set_weight: expected a number, got "5"',
    ]
    assert problems("steps: []") == ["shop.yaml:7 strategy.canary.steps: must not be empty"]
    assert problems("sticky: {}") == ["shop.yaml:6 strategy.canary.steps: required key missing"]


def test_weights_in_hundredths_and_canary_replicas() -> None:
    spec = canary("steps: [{set_weight: 0.01}, {set_weight: 2.5}, {set_weight: 100}]\nreplicas: 3")
    assert [s.set_weight for s in spec.steps] == [0.01, 2.5, 100.0]     # type: ignore[union-attr]
    assert spec.replicas == 3 and spec.canary_instances(1, 10) == 3
    assert canary("steps: [{set_weight: 1}]\nreplicas: auto").replicas is None
    assert problems("steps: [{set_weight: 0.001}]") == [
        "shop.yaml:7 strategy.canary.steps[0].set_weight: 0.001 is finer than 0.01 (users are split into "
        "10,000 buckets)"]
    assert problems("steps: [{set_weight: 101}]")[0].startswith("shop.yaml:7 strategy.canary.steps[0].set_weight:")
    assert problems("steps: [{set_weight: 1}]\nreplicas: 0")[0].startswith("shop.yaml:8 strategy.canary.replicas:")


def test_analysis_errors() -> None:
    assert problems("""\
steps: [{set_weight: 1}]
analysis:
  alpha: 1
  min_requests: 0
  metrics:
    - {name: a, success_rate: {min: 2}}
    - {name: b, latency: {quantile: 0.99, max: 500}}
    - {name: c}
    - {name: d, prometheus: {query: q}}
    - {name: e, latency: {quantile: 0.5, max: 1s}, success_rate: {min: 0.5}}
    - {name: f, compare_to_stable: {error_rate: false, latency: false}}
    - {name: g, prometheus: {query: q, min: 2, max: 1, address: "ftp://x"}}
    - {name: "h i", success_rate: {min: 0.5}}
""") == [
        "shop.yaml:9 strategy.canary.analysis.alpha: must be less than 1, got 1",
        "shop.yaml:10 strategy.canary.analysis.min_requests: must be at least 1, got 0",
        "shop.yaml:12 strategy.canary.analysis.metrics[0].success_rate.min: must be at most 1, got 2",
        "shop.yaml:13 strategy.canary.analysis.metrics[1].latency.max: 500 is a bare number; durations need a "
        "unit (write 500s, not 500)",
        "shop.yaml:14 strategy.canary.analysis.metrics[2]: give one of success_rate, latency, "
        "compare_to_stable or prometheus",
        "shop.yaml:15 strategy.canary.analysis.metrics[3].prometheus: give min, max or both: the bounds the "
        "query result must stay within",
        "shop.yaml:16 strategy.canary.analysis.metrics[4]: give exactly one of success_rate, latency, "
        "compare_to_stable or prometheus, not success_rate and latency",
        "shop.yaml:17 strategy.canary.analysis.metrics[5].compare_to_stable: compares nothing: set error_rate "
        "or latency to true",
        'shop.yaml:18 strategy.canary.analysis.metrics[6].prometheus.address: "ftp://x" must be an http(s) URL '
        "like http://127.0.0.1:9090",
        'shop.yaml:19 strategy.canary.analysis.metrics[7].name: "h i" is not a valid metric name '
        "(letters, digits, - _ .)",
    ]
    assert problems("""\
steps: [{set_weight: 1}]
analysis:
  metrics:
    - {name: g, prometheus: {query: q, min: 2, max: 1}}""") == [
        "shop.yaml:10 strategy.canary.analysis.metrics[0].prometheus: min (2.0) is greater than max (1.0)"]


def test_metric_names_are_unique() -> None:
    assert problems("""\
steps: [{set_weight: 1}]
analysis:
  metrics:
    - {name: a, success_rate: {min: 0.9}}
    - {name: b, success_rate: {min: 0.9}}
    - {name: a, latency: {quantile: 0.9, max: 1s}}""") == [
        'shop.yaml:9 strategy.canary.analysis.metrics: metric name "a" is used by items 0 and 2; '
        "names must be unique"]


def test_python_construction_accepts_models_and_seconds() -> None:
    spec = CanarySpec(steps=[SetWeightStep(set_weight=5), PauseStep(pause="2s"),  # type: ignore[arg-type]
                             PauseStep(pause=PauseSpec(duration=0.25)), AnalysisStep(analysis={"duration": 3})])  # type: ignore[arg-type]
    assert [type(s).__name__ for s in spec.steps] == ["SetWeightStep", "PauseStep", "PauseStep", "AnalysisStep"]
    assert spec.steps[1] == PauseStep(pause=PauseSpec(duration=2.0))
    assert spec.steps[3] == AnalysisStep(analysis={"duration": 3.0})  # type: ignore[arg-type]
