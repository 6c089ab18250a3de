"""The canary judge runs its prometheus metrics through `Deps.query_metric`, so what a
provider answers is what the judge acts on; without one, nothing passes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shipyard.analysis import Verdict
from shipyard.analysis.context import QueryContext
from shipyard.engine.deps import Deps, no_metric_provider
from shipyard.engine.judging import CanaryJudge
from shipyard.engine.metrics_feed import MetricsFeed
from shipyard.images import ImageStore
from shipyard.paths import StatePaths
from shipyard.rollout.model import AnalysisVerdict, Kind, Observation, Phase, Rollout
from shipyard.spec import Spec, parse_spec
from shipyard.spec.strategy import PrometheusMetric
from shipyard.state.sqlite import SqliteStore

SPEC = """\
service: shop
listen: 127.0.0.1:8080
run: {command: [python3, -m, shop]}
replicas: 2
strategy:
  canary:
    steps:
      - set_weight: 50
      - analysis: {duration: 10s}
    analysis:
      interval: 2s
      metrics:
        - name: canary-5xx
          prometheus: {query: 'sum(rate(errors{track="{{track}}"}[{{interval}}]))', max: 0.05}
"""

ENV = {"SHIPYARD_PROMETHEUS_URL": "http://prometheus.invalid:9090"}


class Unused:
    """An adapter the judge must not touch while it judges."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the judge used {self.what}.{name}")


@dataclass
class FakeQuery:
    """Answers every prometheus metric with a canned status and records how it was asked."""

    status: str = "failed"
    calls: list[tuple[str, PrometheusMetric, QueryContext, Mapping[str, str]]] = field(default_factory=list)

    async def __call__(self, name: str, metric: PrometheusMetric, context: QueryContext,
                       env: Mapping[str, str], /) -> Verdict:
        self.calls.append((name, metric, context, env))
        return Verdict(metric=name, kind="prometheus", status=self.status, value=0.5, threshold=metric.max,
                       samples=0, detail=f"fake provider says {self.status}", evidence={"fake": True})


@pytest.fixture
def spec() -> Spec:
    return parse_spec(SPEC, "shop.yaml", Path("/tmp"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        yield s
    finally:
        s.close()


def rollout() -> Rollout:
    return Rollout(id="shop-2", service="shop", kind=Kind.DEPLOY, phase=Phase.PROGRESSING, target_slot="green",
                   previous_slot="blue", image_id="c0ffee0123ab" + "9" * 52,
                   previous_image_id="beef00112233" + "8" * 52, strategy="canary")


def judge_with(store: SqliteStore, tmp_path: Path, spec: Spec, **swapped: Any) -> CanaryJudge:
    deps = Deps(store=store, images=ImageStore(tmp_path / "images"), runtime=Unused("runtime"),
                router=Unused("router"), paths=StatePaths(tmp_path), env=ENV, **swapped)
    return CanaryJudge(deps, MetricsFeed(deps), rollout(), spec)


async def test_prometheus_verdicts_come_from_the_query_in_deps(store: SqliteStore, tmp_path: Path,
                                                               spec: Spec) -> None:
    fake = FakeQuery()
    judge = judge_with(store, tmp_path, spec, query_metric=fake)
    await judge.query_prometheus()
    [verdict] = judge.tick()
    assert (verdict.metric, verdict.status, verdict.detail) == ("canary-5xx", "failed", "fake provider says failed")
    [(name, metric, context, env)] = fake.calls
    assert (name, metric) == ("canary-5xx", spec.strategy.canary.analysis.metrics[0].prometheus)
    assert context == QueryContext("shop", "green", "blue", rollout().image_id, rollout().previous_image_id, 2.0)
    assert env == ENV
    assert store.get_analysis("shop-2")["verdicts"][0]["detail"] == "fake provider says failed"


async def test_a_failure_from_the_query_ends_the_background_watch(store: SqliteStore, tmp_path: Path,
                                                                  spec: Spec) -> None:
    judge = judge_with(store, tmp_path, spec, query_metric=FakeQuery("failed"))
    queue: asyncio.Queue[Observation] = asyncio.Queue()
    await asyncio.wait_for(judge.watch(rollout, queue), 10)
    assert queue.get_nowait() == AnalysisVerdict("failed", "canary-5xx (prometheus): fake provider says failed",
                                                 background=True)


async def test_without_a_provider_a_query_is_inconclusive_never_a_pass(store: SqliteStore, tmp_path: Path,
                                                                       spec: Spec) -> None:
    judge = judge_with(store, tmp_path, spec)
    assert judge.d.query_metric is no_metric_provider    # serve wires prometheus.judge: test_prometheus_analysis
    await judge.query_prometheus()
    [verdict] = judge.tick()
    assert (verdict.status, verdict.detail) == ("inconclusive", "no metric provider is wired into this controller")

