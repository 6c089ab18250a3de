"""What the daemon knows, as Prometheus families: the daemon itself, rollouts, analysis
verdicts, instance health and drift, all read from the state store and the drift reports."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from shipyard import __version__
from shipyard.drift.report import KINDS
from shipyard.engine.controller import Controller
from shipyard.engine.queries import Queries
from shipyard.errors import StoreUnavailable
from shipyard.rollout.model import Phase
from shipyard.rollout.records import ServiceRecord
from shipyard.server.metrics.hosts import host_families
from shipyard.server.metrics.traffic import short


def state_families(controller: Controller, services: list[ServiceRecord]) -> list[Metric]:
    store = controller.queries
    return [*_daemon(controller), *_rollouts(store, services), *_analysis(store),
            _instances(store, services), *_drift(controller, services), _router_restarts(store, services),
            _store_refusals(store), *host_families(store)]


def _store_refusals(store: Queries) -> Metric:
    refused = CounterMetricFamily("shipyard_store_refusals",
                                  "State store calls refused because the store was unavailable (the step or "
                                  "command waited and was retried), since the daemon started", labels=["cause"])
    counts = store.store_refusals()
    for cause in StoreUnavailable.CAUSES:
        refused.add_metric([cause], counts.get(cause, 0))
    return refused


def _router_restarts(store: Queries, services: list[ServiceRecord]) -> Metric:
    restarts = CounterMetricFamily("shipyard_router_restarts",
                                   "Times the service's router was found dead (or mute) and restarted, "
                                   "since the daemon started", labels=["service"])
    for svc in services:
        restarts.add_metric([svc.name], store.router_restarts(svc.name))
    return restarts


def _daemon(controller: Controller) -> list[Metric]:
    mode = (controller.queries.enforcement() or {}).get("mode", "unknown")
    info = GaugeMetricFamily("shipyard_daemon_info", "The daemon's version and enforcement mode (value 1)",
                             labels=["version", "enforcement"])
    info.add_metric([__version__, mode], 1)
    enforcement = GaugeMetricFamily("shipyard_enforcement_info",
                                    "The mechanism keeping instances out of their image trees", labels=["mode"])
    if controller.queries.enforcement() is not None:
        enforcement.add_metric([mode], 1)
    return [info, enforcement]


def _rollouts(store: Queries, services: list[ServiceRecord]) -> list[Metric]:
    phase = GaugeMetricFamily("shipyard_rollout_phase",
                              "1 for the phase the service's latest rollout is in, 0 for the others",
                              labels=["service", "phase"])
    info = GaugeMetricFamily("shipyard_rollout_info", "The service's latest rollout (value 1)",
                             labels=["service", "rollout", "kind", "strategy", "release", "previous_release"])
    active = GaugeMetricFamily("shipyard_rollout_active", "1 while a rollout of the service is in progress",
                               labels=["service"])
    weight = GaugeMetricFamily("shipyard_canary_weight_percent",
                               "Percent of users on the canary of the rollout in progress (0 without one)",
                               labels=["service"])
    step = GaugeMetricFamily("shipyard_canary_step", "Index of the canary step being carried out",
                             labels=["service"])
    started = GaugeMetricFamily("shipyard_rollout_phase_started_timestamp_seconds",
                                "When the latest rollout entered its phase", labels=["service"])
    for svc in services:
        latest = next(iter(store.rollouts(svc.name, 1)), None)
        if latest is None:
            continue
        for p in Phase:
            phase.add_metric([svc.name, str(p)], 1 if p == latest.phase else 0)
        info.add_metric([svc.name, latest.id, str(latest.kind), latest.strategy, short(latest.image_id),
                         short(latest.previous_image_id)], 1)
        running = not latest.phase.terminal
        active.add_metric([svc.name], 1 if running else 0)
        canary = running and latest.strategy == "canary"
        weight.add_metric([svc.name], latest.weight if canary else 0)
        if canary:
            step.add_metric([svc.name], latest.step_index)
        started.add_metric([svc.name], latest.phase_started_at)
    finished = CounterMetricFamily("shipyard_rollouts", "Rollouts that ended, by outcome",
                                   labels=["service", "kind", "strategy", "outcome"])
    for service, kind, strategy, outcome, n in store.finished_rollout_counts():
        finished.add_metric([service, kind, strategy, outcome], n)
    return [phase, info, active, weight, step, started, finished]


_finished_verdicts: weakref.WeakKeyDictionary[Queries, dict[str, list[tuple[str, str, str, str]]]] = (
    weakref.WeakKeyDictionary())
"""Per store, rollout id -> (service, metric, kind, status) of its final verdicts: a finished
rollout's analysis never changes, so each is parsed once rather than on every scrape."""


def _analysis(store: Queries) -> list[Metric]:
    """Counters from finished rollouts (their final verdict per metric, so they only grow);
    gauges from the analysis of the rollouts in progress, with the numbers that decide."""
    seen = _finished_verdicts.setdefault(store, {})
    for rid in store.finished_analysis_ids():
        if rid not in seen:
            seen[rid] = _verdict_rows(store, rid)
    totals: dict[tuple[str, str, str, str], int] = {}
    for rows in seen.values():
        for key in rows:
            totals[key] = totals.get(key, 0) + 1
    verdicts = CounterMetricFamily("shipyard_analysis_verdicts",
                                   "Final verdicts of finished canary analyses, by metric and status",
                                   labels=["service", "metric", "kind", "status"])
    for (service, metric, kind, status), n in sorted(totals.items()):
        verdicts.add_metric([service, metric, kind, status], n)
    current = GaugeMetricFamily("shipyard_analysis_verdict",
                                "1 for the status the running analysis gives each metric now, 0 for the others",
                                labels=["service", "metric", "kind", "status"])
    value = GaugeMetricFamily("shipyard_analysis_value", "The figure the running analysis compares to its threshold",
                              labels=["service", "metric", "kind"])
    threshold = GaugeMetricFamily("shipyard_analysis_threshold", "The threshold of the running analysis",
                                  labels=["service", "metric", "kind"])
    samples = GaugeMetricFamily("shipyard_analysis_samples", "Canary observations the running verdict rests on",
                                labels=["service", "metric", "kind"])
    for r in store.active_rollouts():
        if r.strategy != "canary":
            continue
        for v in (store.get_analysis(r.id) or {}).get("verdicts", []):
            labels = [r.service, str(v["metric"]), str(v["kind"])]
            for status in ("successful", "failed", "inconclusive"):
                current.add_metric([*labels, status], 1 if v["status"] == status else 0)
            for family, key in ((value, "value"), (threshold, "threshold"), (samples, "samples")):
                if v.get(key) is not None:
                    family.add_metric(labels, float(v[key]))
    return [verdicts, current, value, threshold, samples]


def _verdict_rows(store: Queries, rollout_id: str) -> list[tuple[str, str, str, str]]:
    try:
        rollout, doc = store.get_rollout(rollout_id), store.get_analysis(rollout_id)
        if rollout is None or doc is None:
            return []
        return [(rollout.service, str(v["metric"]), str(v["kind"]), str(v["status"])) for v in doc.get("verdicts", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _instances(store: Queries, services: Iterable[ServiceRecord]) -> Metric:
    healthy = GaugeMetricFamily("shipyard_instance_healthy",
                                "1 when the instance passes its health check, 0 while starting or unhealthy",
                                labels=["service", "instance", "slot", "release"])
    for svc in services:
        for inst, status in store.instances(svc.name):
            healthy.add_metric([svc.name, inst.id, inst.slot, short(inst.image_id)], 1 if status == "healthy" else 0)
    return healthy


def _drift(controller: Controller, services: Iterable[ServiceRecord]) -> list[Metric]:
    clean = GaugeMetricFamily("shipyard_drift_clean", "1 when the last drift scan of the service found nothing, else 0",
                              labels=["service"])
    findings = GaugeMetricFamily("shipyard_drift_findings", "Findings of the last drift scan, by kind",
                                 labels=["service", "kind"])
    scanned = GaugeMetricFamily("shipyard_drift_last_scan_timestamp_seconds", "When the last drift scan of each mode ran",
                                labels=["service", "mode"])
    for svc in services:
        report = controller.queries.get_drift_report(svc.name)
        if report is None:
            continue
        clean.add_metric([svc.name], 1 if report["clean"] else 0)
        counts = report.get("counts", {})
        for kind in KINDS:
            findings.add_metric([svc.name, kind], counts.get(kind, 0))
        scanned.add_metric([svc.name, report["mode"]], report["scanned_at"])
        if report.get("last_full_at") and report["mode"] != "full":
            scanned.add_metric([svc.name, "full"], report["last_full_at"])
    return [clean, findings, scanned]
