"""Durations: the exact text users write, and exact round trips through the canonical form."""

from __future__ import annotations

import random

import pytest

from shipyard.spec import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("1m30s", 90.0), ("0s", 0.0), ("1.1h", 3960.0), ("2h0m1s", 7201.0),
    ("1.5ms", 0.0015), ("1m500ms", 60.5),
])
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (600.0, "10m"), (0.5, "500ms"), (90.0, "1m30s"), (0.0, "0s"), (1.5, "1.5s"), (3600, "1h"),
    (5400.0, "1h30m"), (10800.001, "3h1ms"), (86400.5, "24h500ms"), (0.0015, "1.5ms"), (90.25, "1m30.25s"),
])
def test_format_is_canonical(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["10 minutes", "", "ms", "1m1h", "1.s", "-1s", "1d", "10S", "1h 30m", "s10"])
def test_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 10m"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["10", "1.5"])
def test_number_without_unit_says_how_to_fix(text: str) -> None:
    with pytest.raises(ValueError, match=rf"write {text}s, not {text}"):
        parse_duration(text)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), True, "10s"])
def test_format_rejects_non_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)  # type: ignore[arg-type]


def test_round_trip_is_exact_for_any_float() -> None:
    rnd = random.Random(42)
    values = [rnd.uniform(0, 10) for _ in range(300)] + [rnd.uniform(0, 1e6) for _ in range(300)]
    values += [0.1 + 0.2, 1e-9, 59.999999, 3599.9995, 1e12]
    for value in values:
        text = format_duration(value)
        assert parse_duration(text) == value, (value, text)
        assert format_duration(parse_duration(text)) == text
