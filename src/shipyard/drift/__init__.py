"""Drift detection: is what runs exactly what was released and tested?

Pure detection over plain records (no daemon): ``scan_service`` compares a service's
record, its instances and their image trees with what is running and returns a
DriftReport. Healing (replace, never patch) lives elsewhere and acts on the report."""

from shipyard.drift.baseline import BaselineStore
from shipyard.drift.content import ContentResult, scan_tree
from shipyard.drift.detect import ServiceInputs, default_baselines, scan, scan_service
from shipyard.drift.processes import ExpectedProcess, expected_process
from shipyard.drift.report import DriftFinding, DriftReport

__all__ = [
    "BaselineStore",
    "ContentResult",
    "DriftFinding",
    "DriftReport",
    "ExpectedProcess",
    "ServiceInputs",
    "default_baselines",
    "expected_process",
    "scan",
    "scan_service",
    "scan_tree",
]
