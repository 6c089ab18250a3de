"""Which drift a replacement cures: content and process drift replace the instance (and a
tampered tree is re-materialised), a slot that should be gone is stopped, and what is not
ours (unmanaged) or not known (unknown) is never touched."""

from __future__ import annotations

import sqlite3

from shipyard.drift import DriftFinding, DriftReport
from shipyard.engine.healing import heal_targets
from shipyard.state.drift_reports import DriftReports


def report(*findings: DriftFinding) -> DriftReport:
    return DriftReport(service="shop", scanned_at=1.0, mode="full", findings=list(findings))


def test_content_process_and_release_drift_map_to_their_cure() -> None:
    r = report(
        DriftFinding("content", "shop-blue-1", "shop", "changed", ["a.py"], {"image_id": "img1", "change": "content"}),
        DriftFinding("content", "shop-blue-2", "shop", "changed", ["a.py"], {"image_id": "img1", "change": "content"}),
        DriftFinding("process", "shop-blue-3", "shop", "argv differs", [], {"change": "argv"}),
        DriftFinding("release", "shop-green-1", "shop", "slot idle", [], {"change": "slot_should_be_gone"}),
        DriftFinding("release", "shop-blue-4", "shop", "wrong image", [], {"change": "wrong_image"}),
        DriftFinding("release", None, "shop", "too few", [], {"change": "too_few_instances"}),
        DriftFinding("unmanaged", None, "shop", "stray", [], {"pids": [42]}),
        DriftFinding("unknown", "shop-blue-5", "shop", "unreadable", ["x"], {"image_id": "img1"}),
    )
    replace, stop, tampered = heal_targets(r)
    assert replace == {"shop-blue-1", "shop-blue-2", "shop-blue-3", "shop-blue-4"}
    assert stop == {"shop-green-1"}
    assert tampered == {"img1"}


def test_clean_report_heals_nothing() -> None:
    assert heal_targets(report()) == (set(), set(), set())


def test_drift_reports_keep_the_last_and_the_last_full_scan() -> None:
    store = DriftReports(sqlite3.connect(":memory:"))
    assert store.get("shop") is None
    store.put("shop", {"service": "shop", "mode": "full", "clean": True, "scanned_at": 10.0, "findings": []})
    store.put("shop", {"service": "shop", "mode": "metadata", "clean": False, "scanned_at": 20.0,
                       "findings": [{"kind": "content"}]})
    doc = store.get("shop")
    assert doc is not None and doc["clean"] is False and doc["scanned_at"] == 20.0 and doc["last_full_at"] == 10.0
