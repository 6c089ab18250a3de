"""Blast radius: users and requests exposed before the first possible verdict."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shipyard.rollout.exposure import exposure
from shipyard.spec import parse_spec

HEAD = "service: shop\nlisten: 127.0.0.1:8080\nrun: {command: [x]}\nstrategy:\n"


def spec(strategy: str):
    return parse_spec(HEAD + strategy, "shop.yaml", Path("/tmp"))


def test_verdict_during_the_first_pause() -> None:
    s = spec("  canary:\n    steps: [{set_weight: 5}, {pause: 60s}, {set_weight: 50}]\n"
             "    analysis: {min_requests: 50, interval: 5s}\n")
    e = exposure(s, 200)       # 10 req/s on the canary: 50 requests after 5 s
    assert (e.max_share, e.step, e.seconds, e.requests) == (5, 2, 5, 50)
    assert "5s after" in e.note


def test_too_little_traffic_moves_the_verdict_to_a_later_step() -> None:
    s = spec("  canary:\n    steps: [{set_weight: 1}, {pause: 10s}, {set_weight: 20}, {pause: {}}]\n"
             "    analysis: {min_requests: 100, interval: 5s}\n")
    e = exposure(s, 100)       # 1 req/s for 10 s = 10 requests; then 20 req/s: 90 more after 4.5 s -> interval ok
    assert e.max_share == 20 and e.step == 4
    assert e.requests == pytest.approx(100) and e.seconds == pytest.approx(14.5)
    assert e.max_weight_without_analysis == 20


def test_no_possible_verdict_means_full_exposure() -> None:
    s = spec("  canary:\n    steps: [{set_weight: 10}, {pause: 1s}]\n    analysis: {min_requests: 500}\n")
    e = exposure(s, 10)
    assert e.max_share == 100 and e.seconds is None and math.isinf(e.requests)
    assert "no verdict is possible" in e.note and "min_requests (500)" in e.note


def test_blue_green_exposes_everyone() -> None:
    e = exposure(spec("  blue_green: {}\n"), 50)
    assert e.max_share == 100 and e.strategy == "blue_green" and "preview checks" in e.note


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        exposure(spec("  blue_green: {}\n"), 0)
