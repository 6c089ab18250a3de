"""/metrics in Prometheus' text format: what the daemon knows, as gauges a Prometheus
server scrapes. Built afresh on each scrape from the store, so it is never stale and
holds nothing between scrapes. No secrets: only names, counts, verdicts and times."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from shipyard.drift.report import KINDS
from shipyard.rollout.controller import Controller

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(controller: Controller) -> bytes:
    registry = CollectorRegistry(auto_describe=True)
    clean = Gauge("shipyard_drift_clean", "1 when the last drift scan of the service found nothing, else 0",
                  ["service"], registry=registry)
    findings = Gauge("shipyard_drift_findings", "Findings of the last drift scan, by kind",
                     ["service", "kind"], registry=registry)
    scanned = Gauge("shipyard_drift_last_scan_timestamp_seconds", "When the last drift scan of each mode ran",
                    ["service", "mode"], registry=registry)
    enforcement = Gauge("shipyard_enforcement_info", "The mechanism keeping instances out of their image trees",
                        ["mode"], registry=registry)
    mode = controller.enforcement()
    if mode is not None:
        enforcement.labels(mode["mode"]).set(1)
    for svc in controller.d.store.list_services():
        report = controller.drift.reports.get(svc.name)
        if report is None:
            continue
        clean.labels(svc.name).set(1 if report["clean"] else 0)
        counts = report.get("counts", {})
        for kind in KINDS:
            findings.labels(svc.name, kind).set(counts.get(kind, 0))
        scanned.labels(svc.name, report["mode"]).set(report["scanned_at"])
        if report.get("last_full_at"):
            scanned.labels(svc.name, "full").set(report["last_full_at"])
    return generate_latest(registry)
