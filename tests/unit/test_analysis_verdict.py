"""Verdicts: JSON form, the overall rule, and the wording of numbers."""

from __future__ import annotations

import json
import math

import pytest

from shipyard.analysis.verdict import Verdict, num, overall, pct, rate


def _v(status: str) -> Verdict:
    return Verdict(metric="m", kind="success_rate", status=status, value=0.5, threshold=0.9,  # type: ignore[arg-type]
                   samples=10, detail="d")


def test_verdict_round_trips_through_json_even_with_an_infinite_value() -> None:
    v = Verdict(metric="p99", kind="latency", status="failed", value=math.inf, threshold=500.0, samples=80,
                detail="canary p99 > 500 ms", evidence={"bucket": 168})
    text = json.dumps(v.to_dict(), allow_nan=False)
    back = Verdict.from_dict(json.loads(text))
    assert back == v


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of successful, failed, inconclusive"):
        _v("maybe")


@pytest.mark.parametrize(("statuses", "expected"), [
    (["successful", "failed", "inconclusive"], "failed"),
    (["successful", "successful"], "successful"),
    (["successful", "inconclusive"], "inconclusive"),
    ([], "inconclusive"),
])
def test_overall_rule(statuses: list[str], expected: str) -> None:
    assert overall([_v(s) for s in statuses]) == expected


def test_numbers_read_at_a_glance() -> None:
    assert pct(0.1034) == "10.3%"
    assert pct(0.09) == "9.00%"
    assert pct(0.00123) == "0.123%"
    assert pct(0.0) == "0.0%"
    assert pct(1.0) == "100.0%"
    assert num(0.31) == "0.31" and num(20.0) == "20" and num(2100.0) == "2.1e3" and num(4.2e-5) == "4.2e-5"
    assert rate(31, 301) == "10.3% (31/301)"
    assert rate(0, 0) == "n/a (0/0)"
