"""HealthTracker: the state an instance is in, from the sequence of probe outcomes."""

from __future__ import annotations

import pytest

from shipyard.runtime.health import HealthTracker, ProbeResult


def run(tracker: HealthTracker, outcomes: str) -> list[str]:
    """Feed '+' (success) / '-' (failure) and collect the states."""
    return [tracker.observe(c == "+") for c in outcomes]


def test_starts_starting_and_needs_n_consecutive_successes() -> None:
    t = HealthTracker(healthy_threshold=3, unhealthy_threshold=2)
    assert t.state == "starting"
    assert run(t, "++-++") == ["starting"] * 5  # a failure resets the count
    assert t.observe(True) == "healthy"


def test_failures_while_starting_do_not_make_it_unhealthy() -> None:
    t = HealthTracker(healthy_threshold=1, unhealthy_threshold=1)
    assert run(t, "----") == ["starting"] * 4
    assert t.observe(True) == "healthy"


def test_healthy_to_unhealthy_after_m_consecutive_failures() -> None:
    t = HealthTracker(healthy_threshold=1, unhealthy_threshold=3)
    assert run(t, "+--+--") == ["healthy"] * 6  # the success in between resets the failures
    assert t.observe(False) == "unhealthy"
    assert t.failures == 3 and t.successes == 0


def test_unhealthy_back_to_healthy_after_n_consecutive_successes() -> None:
    t = HealthTracker(healthy_threshold=2, unhealthy_threshold=1)
    assert run(t, "++-") == ["starting", "healthy", "unhealthy"]
    assert run(t, "+-+") == ["unhealthy"] * 3
    assert t.observe(True) == "healthy"


def test_thresholds_of_one_follow_every_probe() -> None:
    t = HealthTracker(1, 1)
    assert run(t, "+-+-") == ["healthy", "unhealthy", "healthy", "unhealthy"]


@pytest.mark.parametrize(("healthy", "unhealthy"), [(0, 1), (1, 0), (-1, 3)])
def test_thresholds_must_be_positive(healthy: int, unhealthy: int) -> None:
    with pytest.raises(ValueError):
        HealthTracker(healthy, unhealthy)


def test_probe_result_describe() -> None:
    assert ProbeResult(False, 500, None, 0.01).describe("/healthz") == "GET /healthz -> 500"
    assert ProbeResult(False, None, "timed out after 2s", 2.0).describe("/") == "GET / -> timed out after 2s"
