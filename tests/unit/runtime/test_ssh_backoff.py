"""Reconnect delays: exponential from `initial`, never above `cap`, jittered within
[ceiling * (1 - jitter), ceiling], reset once a connection proved stable."""

from __future__ import annotations

import random

import pytest

from shipyard.runtime.ssh.backoff import Backoff, BackoffPolicy


def test_ceilings_double_up_to_the_cap() -> None:
    p = BackoffPolicy(initial=0.2, factor=2, cap=5, jitter=0.5)
    assert [p.ceiling(n) for n in range(7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5, 5])
    assert p.ceiling(10_000) == 5                 # no overflow however long a host stays away


def test_jitter_stays_within_its_band_and_spreads_hosts_apart() -> None:
    p = BackoffPolicy(initial=1, factor=2, cap=8, jitter=0.5)
    rng = random.Random(7)
    for n in range(6):
        draws = [p.delay(n, rng) for _ in range(500)]
        top = p.ceiling(n)
        assert all(top / 2 <= d <= top for d in draws)
        assert max(draws) - min(draws) > top * 0.4      # spread: 100 hosts do not retry in lockstep


def test_no_jitter_is_exact_and_full_jitter_reaches_zero() -> None:
    exact = BackoffPolicy(initial=0.5, factor=3, cap=10, jitter=0)
    assert [exact.delay(n, random.Random()) for n in range(4)] == pytest.approx([0.5, 1.5, 4.5, 10])
    full = BackoffPolicy(initial=1, cap=1, jitter=1)
    rng = random.Random(1)
    assert min(full.delay(0, rng) for _ in range(200)) < 0.05


def test_sequence_grows_and_reset_starts_over() -> None:
    b = Backoff(BackoffPolicy(initial=0.1, factor=2, cap=1, jitter=0), random.Random(0))
    assert [b.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1, 1])
    b.reset()
    assert b.next() == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [dict(initial=0), dict(initial=2, cap=1), dict(factor=0.5), dict(jitter=1.5)])
def test_nonsense_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff policy"):
        BackoffPolicy(**bad)
