"""Judging one canary rollout while it runs: once per analysis interval (at least a
second: the router reports whole seconds) the router's fresh seconds of both tracks go
into the analysis, the evidence is stored with the rollout (so it survives a daemon
restart and is shown by `status`), and a failed verdict is reported at once. Every
second is fed, however long the interval: the interval says how often the verdict is
read (and written), not which seconds count. Inline `analysis` steps ask the same judge
for a verdict over their window, so there is one sequential test per rollout and its
false-alarm bound holds.

Prometheus metrics are queried on the same cadence, just before each judgement: a query
is a network round trip to another server, not a free read of the router's series.
Their latest verdicts join the same list and the same abort rule."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from shipyard.analysis import SequentialState, Verdict, Window, evaluate, overall
from shipyard.analysis.context import QueryContext
from shipyard.engine.deps import Deps
from shipyard.engine.metrics_feed import MetricsFeed
from shipyard.errors import StoreUnavailable
from shipyard.rollout.canary import JUDGED, has_baseline
from shipyard.rollout.model import AnalysisVerdict, Observation, Rollout
from shipyard.rollout.records import BASELINE_MAX_WEIGHT, BASELINE_SLOT
from shipyard.spec import Spec


class CanaryJudge:
    def __init__(self, deps: Deps, feed: MetricsFeed, r: Rollout, spec: Spec) -> None:
        assert spec.strategy.canary is not None and r.previous_slot is not None
        self.d = deps
        self.feed = feed
        self.spec = spec
        self.analysis = spec.strategy.canary.analysis
        self.rollout_id = r.id
        self.service = r.service
        self.canary, self.stable = r.target_slot, r.previous_slot
        self.baseline = has_baseline(r, spec)
        doc = deps.store.get_analysis(r.id) or {}
        self.reference: str = doc.get("reference") or self.reference_for(r.weight)
        """The track the canary's seconds are compared with: the baseline while it takes users."""
        self.state = SequentialState.from_dict(doc["state"]) if doc.get("state") else None
        self.since = int(doc.get("since") or math.floor(deps.clock.now()) - 1)   # judged seconds are > since
        self.fed = int(doc.get("fed") or self.since)
        self.verdicts: list[Verdict] = [Verdict.from_dict(v) for v in doc.get("verdicts", [])]
        self.canary_release, self.stable_release = r.image_id, r.previous_image_id
        self.queried = {m.name: m.prometheus for m in self.analysis.metrics if m.prometheus is not None}
        kept = {v.metric: v for v in self.verdicts if v.kind == "prometheus" and v.metric in self.queried}
        self.provided: dict[str, Verdict] = {
            name: kept.get(name) or Verdict(metric=name, kind="prometheus", status="inconclusive", value=None,
                                            threshold=None, samples=0, detail="not queried yet",
                                            evidence={"query_template": check.query})
            for name, check in self.queried.items()}

    def tick(self, window_from: int | None = None, final: bool = False) -> list[Verdict]:
        """Feed what is new, judge the window (whole rollout by default), store the evidence."""
        upto = self.feed.complete_upto(self.service)
        start = self.since if window_from is None else window_from
        canary = self.feed.seconds(self.service, self.canary, start, upto)
        stable = self.feed.seconds(self.service, self.reference, start, upto)
        new = [(c, s) for c, s in zip(canary, stable, strict=True) if c.t > self.fed]
        verdicts, self.state = evaluate(self.analysis, Window.of(canary), Window.of(stable), self.state, new,
                                        final=final, provided=self.provided)
        self.fed = max(self.fed, upto)
        self.verdicts = verdicts
        with contextlib.suppress(StoreUnavailable):   # evidence: the next evaluation writes it whole again
            self.d.store.put_analysis(self.rollout_id, self.to_dict())
        return verdicts

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "fed": self.fed, "canary": self.canary, "stable": self.stable,
                "reference": self.reference,
                "state": self.state.to_dict() if self.state else None,
                "verdicts": [v.to_dict() for v in self.verdicts], "status": overall(self.verdicts)}

    def reference_for(self, weight: float) -> str:
        """The baseline while it takes as many users as the canary (weight <= 50 %), else stable."""
        return BASELINE_SLOT if self.baseline and weight <= BASELINE_MAX_WEIGHT else self.stable

    async def query_prometheus(self) -> None:
        """Run every prometheus metric's query once; their verdicts wait for the next tick."""
        context = QueryContext(self.service, self.canary, self.stable, self.canary_release,
                               self.stable_release, self.analysis.interval)
        found = await asyncio.gather(*(self.d.query_metric(name, check, context, self.d.env)
                                       for name, check in self.queried.items()))
        self.provided.update((v.metric, v) for v in found)

    @property
    def every(self) -> float:
        """Seconds between two judgements: the spec's interval, at least the router's second."""
        return max(1.0, self.analysis.interval)

    async def watch(self, current: Callable[[], Rollout], queue: asyncio.Queue[Observation]) -> None:
        """The background analysis: runs for the whole rollout, judging once per interval
        (prometheus metrics queried first, so their verdicts are fresh), and reports the
        first failure."""
        while True:
            await self.d.clock.sleep(self.every)
            r = current()
            if r.phase not in JUDGED:
                continue
            self.reference = self.reference_for(r.weight)
            if self.queried:
                self.canary_release, self.stable_release = r.image_id, r.previous_image_id
                await self.query_prometheus()
            verdicts = self.tick()
            if overall(verdicts) == "failed":
                await queue.put(AnalysisVerdict("failed", summary(verdicts), background=True))
                return

    async def step(self, until: float) -> AnalysisVerdict:
        """An inline analysis step: judge the seconds from now until `until`; a failure seen
        meanwhile is reported by `watch`, which ends the rollout before this returns."""
        begin = math.floor(self.d.clock.now())
        while self.d.clock.now() < until or self.feed.complete_upto(self.service) < math.floor(until) - 1:
            if self.d.clock.now() > until + 5:        # the router stopped reporting: judge what we have
                break
            await self._fresh_seconds()
        r = self.d.store.get_rollout(self.rollout_id)
        if r is not None:
            self.reference = self.reference_for(r.weight)
        if self.queried:
            if r is not None:
                self.canary_release, self.stable_release = r.image_id, r.previous_image_id
            await self.query_prometheus()
        verdicts = self.tick(window_from=begin, final=True)
        return AnalysisVerdict(overall(verdicts), summary(verdicts))

    async def _fresh_seconds(self) -> None:
        try:
            await asyncio.wait_for(self.feed.pulled.wait(), 2.0)
        except TimeoutError:
            pass


def summary(verdicts: list[Verdict]) -> str:
    """The verdicts that decided, in one line: failures first, else the inconclusive ones."""
    for status in ("failed", "inconclusive"):
        picked = [f"{v.metric} ({v.kind.replace('_', ' ')}): {v.detail}" for v in verdicts if v.status == status]
        if picked:
            return "; ".join(picked)
    return "; ".join(f"{v.metric}: {v.detail}" for v in verdicts) or "no metric to judge"
