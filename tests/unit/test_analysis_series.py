"""Second and Window: the data the judges read, and its JSON form."""

from __future__ import annotations

import json
import re

import pytest

from shipyard import histogram
from shipyard.analysis.series import Second, Window


def test_second_round_trips_through_json_with_string_bucket_keys() -> None:
    s = Second(t=1_700_000_000, requests=12, errors=2, latency={57: 10, 60: 2})
    text = json.dumps(s.to_dict())
    assert '"57": 10' in text
    back = Second.from_dict(json.loads(text))
    assert back == s
    assert back.latency == {57: 10, 60: 2} and all(isinstance(k, int) for k in back.latency)


def test_second_normalises_keys_and_drops_empty_buckets() -> None:
    s = Second(t=5, requests=3, errors=0, latency={"7": 2, 9: 0, "8": 1})  # type: ignore[dict-item]
    assert s.latency == {7: 2, 8: 1}


@pytest.mark.parametrize(("requests", "errors", "latency", "message"), [
    (5, 6, {}, "more errors (6) than requests (5)"),
    (-1, 0, {}, "counts must be >= 0"),
    (5, 0, {histogram.COUNT + 1: 1}, "outside 0..168"),
    (5, 0, {3: -1}, "negative count"),
])
def test_second_rejects_impossible_counts(requests: int, errors: int, latency: dict[int, int],
                                          message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Second(t=1, requests=requests, errors=errors, latency=latency)


def test_window_sums_seconds_and_merges_histograms() -> None:
    seconds = [Second(1, 10, 1, {50: 10}), Second(2, 0, 0, {}), Second(3, 5, 2, {50: 3, 51: 2})]
    w = Window.of(seconds)
    assert (w.requests, w.errors, w.seconds) == (15, 3, 3)
    assert w.latency == {50: 13, 51: 2}
    assert w.latency_count == 15
    assert w.error_rate == pytest.approx(0.2)
    assert Window.from_dict(json.loads(json.dumps(w.to_dict()))) == w


def test_window_without_requests_has_no_rate_and_no_quantile() -> None:
    w = Window.of([])
    assert w.error_rate is None
    assert w.quantile_ms(0.5) is None
    assert w.seconds == 0


def test_window_quantile_is_the_upper_bound_of_the_holding_bucket() -> None:
    w = Window(requests=100, errors=0, latency={40: 50, 48: 49, 80: 1})
    assert w.quantile_ms(0.5) == histogram.upper_ms(40)
    assert w.quantile_ms(0.99) == histogram.upper_ms(48)
    assert w.quantile_ms(0.999) == histogram.upper_ms(80)
