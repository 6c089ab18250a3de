"""DriftReport: exit codes and serialisation (what the CLI and API will print)."""

from __future__ import annotations

import json

from shipyard.drift.report import DriftFinding, DriftReport, Kind


def report(*kinds: Kind) -> DriftReport:
    findings = [DriftFinding(k, "i-1", "shop", f"a {k} finding", ["a.py"], {"x": 1}) for k in kinds]
    return DriftReport("shop", 1.5, "metadata", findings, instances_scanned=2, files_checked=10, bytes_hashed=5,
                       seconds=0.25)


def test_clean_report_exits_zero() -> None:
    r = report()
    assert r.clean and r.exit_code == 0
    assert r.to_dict()["counts"] == {"release": 0, "content": 0, "process": 0, "unmanaged": 0, "unknown": 0}


def test_any_finding_exits_two() -> None:
    kinds: tuple[Kind, ...] = ("release", "content", "process", "unmanaged")
    for kind in kinds:
        r = report(kind)
        assert not r.clean and r.exit_code == 2


def test_unknown_is_not_clean_and_stays_unknown() -> None:
    r = report("unknown")
    assert not r.clean and r.exit_code == 2
    d = r.to_dict()
    assert d["counts"]["unknown"] == 1 and d["clean"] is False
    assert d["findings"][0]["kind"] == "unknown"


def test_round_trip_through_json() -> None:
    r = report("content", "unknown")
    back = DriftReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
