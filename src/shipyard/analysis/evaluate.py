"""One analysis tick: every metric of the spec judged, and the sequential evidence carried on.

Called by the rollout for inline `analysis` steps and by the background monitor
alike. What can fail the canary on its own, at any tick:
- the user's thresholds (success_rate, latency) on the canary's window;
- the sequential monitors of `compare_to_stable`, whose false-failure probability
  over the whole rollout is bounded by alpha however often this is called.
The fixed-horizon comparisons (Fisher, Mann-Whitney) are classical tests valid for
one look; they run only when `final` is set (the end of an analysis step), and
a regression they flag makes the verdict inconclusive (pause for a human), not
failed: letting them abort too would add up to alpha per analysis step to the
false-rollback probability that the sequential test keeps below alpha."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shipyard.spec.strategy import AnalysisSpec, MetricSpec

from . import compare, sequential, thresholds
from .series import Second, Window
from .verdict import Verdict


def evaluate(spec: AnalysisSpec, canary: Window, stable: Window, state: sequential.SequentialState | None,
             seconds: Iterable[tuple[Second, Second]] = (), *, final: bool = False,
             provided: Mapping[str, Verdict] | None = None) -> tuple[list[Verdict], sequential.SequentialState]:
    """Judge every metric of `spec`.

    canary, stable: the window being judged (e.g. since the analysis step began).
    state: the sequential evidence so far (None at the start of a rollout).
    seconds: (canary, stable) pairs of seconds not yet fed; pairs at or before the
      state's last second are skipped, so feeding overlapping ranges is harmless.
    final: the window is complete (end of an analysis step): sequential monitors
      with enough data become successful, and the fixed-horizon comparisons run.
    provided: verdicts of metrics judged elsewhere (prometheus, by the provider that ran
      the query), by metric name; taken as they are, in spec order.
    Returns the verdicts (in spec order) and the state to store for the next tick."""
    plans = sequential.plans_of(spec)
    current = state or sequential.SequentialState()
    for canary_second, stable_second in sorted(seconds, key=lambda pair: pair[0].t):
        current = sequential.advance(current, canary_second, stable_second, plans)
    verdicts: list[Verdict] = []
    for metric in spec.metrics:
        if provided is not None and metric.name in provided:
            verdicts.append(provided[metric.name])
        else:
            verdicts.extend(_judge(spec, metric, canary, stable, current, plans, final))
    return verdicts, current


def _judge(spec: AnalysisSpec, metric: MetricSpec, canary: Window, stable: Window,
           state: sequential.SequentialState, plans: list[sequential.MonitorPlan], final: bool) -> list[Verdict]:
    name, n = metric.name, spec.min_requests
    if metric.success_rate is not None:
        return [thresholds.success_rate(name, metric.success_rate.min, canary, n)]
    if metric.latency is not None:
        check = metric.latency
        return [thresholds.latency(name, check.quantile, check.max * 1000, canary, n)]
    if metric.compare_to_stable is not None:
        cmp = metric.compare_to_stable
        out = [sequential.verdict(state, p, final=final, min_requests=n) for p in plans if p.metric == name]
        if final and cmp.error_rate:
            out.append(_advisory(compare.error_rate_vs_stable(name, canary, stable, cmp.tolerance, spec.alpha, n)))
        if final and cmp.latency:
            out.append(_advisory(compare.latency_vs_stable(name, canary, stable, cmp.tolerance, spec.alpha, n,
                                                                cmp.latency_margin * 1000)))
        return out
    query = metric.prometheus.query if metric.prometheus is not None else ""
    return [Verdict(metric=name, kind="prometheus", status="inconclusive", value=None, threshold=None, samples=0,
                    detail="prometheus provider not configured: this metric cannot be judged yet",
                    evidence={"query": query})]


def _advisory(v: Verdict) -> Verdict:
    """A fixed-horizon failure pauses for a human instead of aborting (see the module docstring)."""
    if v.status != "failed":
        return v
    return Verdict(metric=v.metric, kind=v.kind, status="inconclusive", value=v.value, threshold=v.threshold,
                   samples=v.samples,
                   detail=f"fixed-horizon test flags a regression (advisory: it pauses for a human; only the "
                          f"sequential test aborts on its own): {v.detail}",
                   evidence={**v.evidence, "fixed_horizon_status": "failed"})
