"""fleet/batches.py: batch sizes from max_parallel, and the decision after each batch from health
outcomes and min_healthy (next batch / wait / done / stop and tear down, the reason as data)."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.fleet import batches as batches_module
from shipyard.fleet.batches import (
    BatchPlan,
    Done,
    Outcome,
    StartBatch,
    Stop,
    Wait,
    batch_size,
    decide,
    healthy_needed,
    plan_batches,
)
from shipyard.spec.fleet import BatchSpec

OK, BAD = Outcome.HEALTHY, Outcome.UNHEALTHY


@pytest.mark.parametrize(("max_parallel", "target", "size"), [
    ("25%", 10, 3), ("25%", 4, 1), ("25%", 100, 25), ("1%", 3, 1), ("100%", 7, 7), (2, 10, 2), (50, 10, 10),
    ("25%", 0, 1),
])
def test_batch_size(max_parallel: int | str, target: int, size: int) -> None:
    assert batch_size(max_parallel, target) == size


@pytest.mark.parametrize(("min_healthy", "target", "needed"), [
    ("90%", 10, 9), ("90%", 11, 10), ("100%", 5, 5), ("1%", 5, 1), (3, 5, 3),
])
def test_healthy_needed(min_healthy: int | str, target: int, needed: int) -> None:
    assert healthy_needed(min_healthy, target) == needed


def test_ten_instances_at_25_percent() -> None:
    plan = plan_batches(list(range(10)), 10, BatchSpec(max_parallel="25%", min_healthy="90%"))
    assert plan.batches == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9,))
    assert (plan.required, plan.allowed_failures) == (9, 1)


def test_the_default_stops_at_the_first_failure_and_tears_down_what_it_started() -> None:
    plan = plan_batches(["a", "b", "c", "d"], 4, BatchSpec(max_parallel=2))
    assert decide(plan, 0, {}) == StartBatch(0, ("a", "b"))
    assert decide(plan, 1, {}) == Wait(("a", "b"))
    assert decide(plan, 1, {"a": OK, "b": OK}) == StartBatch(1, ("c", "d"))
    stop = decide(plan, 2, {"a": OK, "b": OK, "c": BAD})          # d still starting: no need to wait for it
    assert stop == Stop(("c",), ("a", "b", "c", "d"), required=4, reachable=3, target=4)
    assert isinstance(stop, Stop) and stop.reason == (
        "1 instance(s) failed their health checks: at most 3 of 4 can be healthy, and min_healthy needs 4 "
        "before traffic moves")


def test_min_healthy_below_100_tolerates_that_many_failures() -> None:
    plan = plan_batches(list(range(10)), 10, BatchSpec(max_parallel="50%", min_healthy="90%"))
    first = {0: OK, 1: OK, 2: BAD, 3: OK, 4: OK}
    assert decide(plan, 1, first) == StartBatch(1, (5, 6, 7, 8, 9))
    assert decide(plan, 2, {**first, 5: OK, 6: OK, 7: OK, 8: OK, 9: OK}) == Done((0, 1, 3, 4, 5, 6, 7, 8, 9), (2,))
    stop = decide(plan, 2, {**first, 7: BAD})
    assert isinstance(stop, Stop) and stop.unhealthy == (2, 7) and stop.tear_down == tuple(range(10))


def test_already_healthy_instances_count_toward_min_healthy() -> None:
    plan = plan_batches(["x", "y"], 4, BatchSpec(max_parallel="100%", min_healthy="75%"), already_healthy=2)
    assert plan.required == 3 and plan.allowed_failures == 1
    assert decide(plan, 1, {"x": BAD, "y": OK}) == Done(("y",), ("x",))


def test_nothing_to_start_is_done_or_a_stop_before_anything_starts() -> None:
    assert decide(plan_batches([], 3, BatchSpec(), already_healthy=3), 0, {}) == Done((), ())
    stop = decide(plan_batches([1], 3, BatchSpec(min_healthy="100%"), already_healthy=1), 0, {})
    assert stop == Stop((), (), required=3, reachable=2, target=3)
    assert isinstance(stop, Stop) and stop.reason.startswith("not enough instances to start: at most 2 of 3")


def test_caller_mistakes_are_value_errors() -> None:
    plan = plan_batches([1, 2], 2, BatchSpec())
    with pytest.raises(ValueError, match="started"):
        decide(plan, 3, {})
    with pytest.raises(ValueError, match="not started"):
        decide(plan, 0, {1: OK})
    with pytest.raises(ValueError, match="more than the target"):
        plan_batches([1, 2, 3], 2, BatchSpec())
    with pytest.raises(ValueError, match="twice"):
        plan_batches([1, 1], 2, BatchSpec())


def test_batches_is_pure() -> None:
    tree = ast.parse(inspect.getsource(batches_module))
    imported = {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert imported <= {"__future__", "collections", "dataclasses", "enum", "typing", "shipyard"}, imported


# -- properties -------------------------------------------------------------------------------------

shares = st.one_of(st.integers(1, 30), st.integers(1, 100).map(lambda p: f"{p}%"))


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, 40), st.integers(0, 10), shares)
def test_batches_split_the_instances_in_order(n: int, extra: int, max_parallel: int | str) -> None:
    target = n + extra
    plan = plan_batches(list(range(n)), target, BatchSpec(max_parallel=max_parallel))
    size = batch_size(max_parallel, target)
    assert plan.members == tuple(range(n))
    assert all(len(b) == size for b in plan.batches[:-1]) and all(0 < len(b) <= size for b in plan.batches)
    assert len(plan.batches) == -(-n // size)
    if isinstance(max_parallel, str) and target:
        assert size >= int(max_parallel[:-1]) * target / 100 > size - 1 or size == 1


@settings(max_examples=400, deadline=None, database=None)
@given(st.integers(1, 30), st.integers(0, 5), shares, shares, st.data())
def test_a_rollout_ends_done_exactly_when_min_healthy_is_met(
        n: int, healthy_before: int, max_parallel: int | str, min_healthy: int | str, data: st.DataObject) -> None:
    target = n + healthy_before
    if isinstance(min_healthy, int):
        min_healthy = min(min_healthy, target)
    plan: BatchPlan[int] = plan_batches(list(range(n)), target, BatchSpec(max_parallel=max_parallel,
                                                                        min_healthy=min_healthy),
                                        already_healthy=healthy_before)
    fate = data.draw(st.lists(st.sampled_from([OK, OK, BAD]), min_size=n, max_size=n))
    started, seen, decisions = 0, {}, 0
    while True:
        decisions += 1
        assert decisions <= 2 * len(plan.batches) + 2
        d = decide(plan, started, seen)
        if isinstance(d, StartBatch):
            assert d.index == started
            failed = sum(1 for o in seen.values() if o is BAD)
            assert failed <= plan.allowed_failures          # never start more once the release cannot make it
            started += 1
        elif isinstance(d, Wait):
            seen.update({m: fate[m] for m in d.pending})
        else:
            break
    failures = sum(1 for o in fate if o is BAD)
    if isinstance(d, Done):
        assert failures <= plan.allowed_failures
        assert healthy_before + len(d.healthy) >= plan.required       # traffic moves only when enough are healthy
        assert sorted(d.healthy + d.unhealthy) == list(range(n))
    else:
        assert isinstance(d, Stop) and failures > plan.allowed_failures
        assert d.reachable < d.required and d.tear_down == plan.members[:len(d.tear_down)]
        assert set(d.tear_down) == {m for b in plan.batches[:started] for m in b}
        crossing = [m for m in range(n) if fate[m] is BAD][max(plan.allowed_failures, 0)] \
            if plan.allowed_failures >= 0 else None
        if crossing is not None:                                     # stopped in the batch that crossed the line
            assert crossing in plan.batches[started - 1]
