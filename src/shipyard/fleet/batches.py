"""Starting new instances across hosts in batches, and deciding after each batch what comes next.

Pure: the instances to start, the target and the spec's `batch` in; a plan of batches out, and
for each moment of the rollout one decision as data: start the next batch, wait for health
outcomes, done (traffic may move), or stop and tear down what was started, with the reason.

A rollout stops as soon as min_healthy can no longer be reached, i.e. once more instances
have failed their health checks than min_healthy allows (with the default 100%: the first
failure), without waiting for the rest of the batch: a release that cannot make it is taken
down early, and traffic never moves before enough of the target is healthy."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from shipyard.spec.fleet import BatchSpec, share_of

M = TypeVar("M", bound=Hashable)
"""One instance to start (a slot number, or whatever the caller names instances by)."""


class Outcome(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    """Failed its health checks (or its start): it counts against min_healthy."""


def batch_size(max_parallel: int | str, target: int) -> int:
    """Instances per batch: a percentage of the target rounded up, or the number; at least 1."""
    return max(1, share_of(max_parallel, target))


def healthy_needed(min_healthy: int | str, target: int) -> int:
    """Healthy instances the target needs before traffic moves: a percentage rounded up, or the number."""
    return share_of(min_healthy, target)


@dataclass(frozen=True)
class BatchPlan(Generic[M]):
    target: int
    required: int
    """Healthy instances (of target) needed for traffic to move."""
    batches: tuple[tuple[M, ...], ...]
    already_healthy: int = 0
    """Instances of the target that are healthy already and are not started again."""

    @property
    def members(self) -> tuple[M, ...]:
        return tuple(m for batch in self.batches for m in batch)

    @property
    def allowed_failures(self) -> int:
        """How many started instances may fail with min_healthy still reachable (negative: none can)."""
        return self.already_healthy + len(self.members) - self.required


def plan_batches(to_start: Sequence[M], target: int, batch: BatchSpec, already_healthy: int = 0) -> BatchPlan[M]:
    """Split `to_start` (in its order) into batches of batch.max_parallel."""
    if len(set(to_start)) != len(to_start):
        raise ValueError("an instance is listed twice in to_start")
    if target < 0 or already_healthy < 0 or already_healthy + len(to_start) > target:
        raise ValueError(f"{already_healthy} healthy + {len(to_start)} to start is more than the target {target}")
    size = batch_size(batch.max_parallel, target)
    batches = tuple(tuple(to_start[i:i + size]) for i in range(0, len(to_start), size))
    return BatchPlan(target, healthy_needed(batch.min_healthy, target), batches, already_healthy)


@dataclass(frozen=True)
class StartBatch(Generic[M]):
    index: int
    members: tuple[M, ...]


@dataclass(frozen=True)
class Wait(Generic[M]):
    """Started instances without an outcome yet: decide again when they have one."""

    pending: tuple[M, ...]


@dataclass(frozen=True)
class Done(Generic[M]):
    """Enough of the target is healthy: traffic may move. `unhealthy` ones get no traffic and are removed."""

    healthy: tuple[M, ...]
    unhealthy: tuple[M, ...]


@dataclass(frozen=True)
class Stop(Generic[M]):
    """min_healthy can no longer be reached: stop, and tear down every instance this rollout started."""

    unhealthy: tuple[M, ...]
    tear_down: tuple[M, ...]
    required: int
    reachable: int
    """The most healthy instances still possible (already healthy + started or to start - failed)."""
    target: int

    @property
    def reason(self) -> str:
        failed = f"{len(self.unhealthy)} instance(s) failed their health checks" if self.unhealthy \
            else "not enough instances to start"
        return (f"{failed}: at most {self.reachable} of {self.target} can be healthy, and min_healthy needs "
                f"{self.required} before traffic moves")


Decision = StartBatch[M] | Wait[M] | Done[M] | Stop[M]


def decide(plan: BatchPlan[M], started: int, outcomes: Mapping[M, Outcome]) -> Decision[M]:
    """What to do now that `started` batches have begun and `outcomes` are known for some of them."""
    if not 0 <= started <= len(plan.batches):
        raise ValueError(f"started must be 0..{len(plan.batches)}, got {started}")
    begun = tuple(m for batch in plan.batches[:started] for m in batch)
    stray = set(outcomes) - set(begun)
    if stray:
        raise ValueError(f"outcomes for instances not started: {sorted(map(str, stray))}")
    unhealthy = tuple(m for m in begun if outcomes.get(m) is Outcome.UNHEALTHY)
    reachable = plan.already_healthy + len(plan.members) - len(unhealthy)
    if reachable < plan.required:
        return Stop(unhealthy, begun, plan.required, reachable, plan.target)
    pending = tuple(m for m in begun if m not in outcomes)
    if pending:
        return Wait(pending)
    if started < len(plan.batches):
        return StartBatch(started, plan.batches[started])
    return Done(tuple(m for m in begun if outcomes[m] is Outcome.HEALTHY), unhealthy)
