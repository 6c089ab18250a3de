"""Thresholds on the canary alone, on hand-made windows with the exact sentences they produce."""

from __future__ import annotations

from shipyard import histogram
from shipyard.analysis.series import Window
from shipyard.analysis.thresholds import latency, success_rate


def test_success_rate_below_min_fails_with_the_numbers() -> None:
    v = success_rate("success", 0.99, Window(requests=301, errors=31, seconds=30), min_requests=50)
    assert v.status == "failed"
    assert v.detail == "canary success rate 89.7% (270/301) < min 99.0%"
    assert v.value == 270 / 301 and v.threshold == 0.99 and v.samples == 301
    assert v.evidence == {"requests": 301, "errors": 31, "seconds": 30}


def test_success_rate_at_min_passes() -> None:
    v = success_rate("success", 0.99, Window(requests=100, errors=1), min_requests=50)
    assert v.status == "successful"
    assert v.detail == "canary success rate 99.0% (99/100) >= min 99.0%"


def test_success_rate_needs_min_requests() -> None:
    v = success_rate("success", 0.99, Window(requests=49, errors=49), min_requests=50)
    assert v.status == "inconclusive" and v.value is None
    assert v.detail == "only 49 canary requests so far; need 50 (min_requests) to judge"


def _lat(counts: dict[int, int]) -> Window:
    return Window(requests=sum(counts.values()), errors=0, latency=counts)


def test_latency_quantile_under_max_passes_on_its_upper_bound() -> None:
    b = histogram.bucket_of(12.0)          # (11.7, 12.8] ms
    v = latency("p99", 0.99, 500.0, _lat({b: 99, b + 1: 1}), min_requests=50)
    assert v.status == "successful"
    assert v.value == histogram.upper_ms(b)
    assert v.detail == "canary p99 <= 12.8 ms (upper bound of its histogram bucket; n=100) <= max 500 ms"


def test_latency_surely_over_max_fails_on_its_lower_bound() -> None:
    b = histogram.bucket_of(700.0)
    v = latency("p99", 0.99, 500.0, _lat({10: 90, b: 10}), min_requests=50)
    assert v.status == "failed"
    assert v.detail == "canary p99 > 689 ms (lower bound of its histogram bucket; n=100) > max 500 ms"


def test_latency_bucket_straddling_max_fails_and_says_so() -> None:
    b = histogram.bucket_of(500.0)         # (487, 531] ms holds 500 ms
    assert histogram.lower_ms(b) < 500 < histogram.upper_ms(b)
    v = latency("p99", 0.99, 500.0, _lat({10: 90, b: 10}), min_requests=50)
    assert v.status == "failed"
    assert v.detail == ("canary p99 is in (487 ms, 531 ms] (n=100), a histogram bucket that straddles max "
                        "500 ms; judged on its upper bound 531 ms > max")


def test_latency_needs_min_samples() -> None:
    v = latency("p99", 0.99, 500.0, _lat({10: 3}), min_requests=50)
    assert v.status == "inconclusive"
    assert v.detail == "only 3 canary latency samples so far; need 50 (min_requests) to judge"


def test_latency_in_the_open_last_bucket_fails_as_infinite() -> None:
    v = latency("p99", 0.99, 500.0, _lat({histogram.COUNT: 60}), min_requests=50)
    assert v.status == "failed" and v.value == float("inf")
    assert v.detail == "canary p99 > 96155 ms (lower bound of its histogram bucket; n=60) > max 500 ms"
