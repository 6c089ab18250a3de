"""Delays between reconnect attempts: exponential, capped, jittered so that a fleet whose
hosts dropped together does not reconnect in lockstep. Pure, so it is tested exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Attempt n (from 0) waits a time drawn from [d * (1 - jitter), d], d = min(cap, initial * factor**n)."""

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5
    stable_after: float = 10.0
    """A connection that stayed up this long resets the sequence; a flapping one keeps backing off."""

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid backoff policy {self}: need 0 < initial <= cap, factor >= 1, "
                             f"0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The longest wait of attempt `attempt` (no jitter)."""
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)

    def delay(self, attempt: int, rng: random.Random) -> float:
        top = self.ceiling(attempt)
        return top - top * self.jitter * rng.random()


class Backoff:
    """The running sequence of one host's reconnect attempts."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        delay = self.policy.delay(self.attempt, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
