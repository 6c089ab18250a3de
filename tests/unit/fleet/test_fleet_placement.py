"""fleet/placement.py: even spread, the fewest moves, determinism, nothing on lost or draining
hosts; properties checked with Hypothesis against a brute-force optimum on small fleets."""

from __future__ import annotations

import ast
import inspect
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.fleet import placement as placement_module
from shipyard.fleet.placement import (
    Assignment,
    HostState,
    PlacementError,
    PlacementHost,
    changes,
    place,
)
from shipyard.spec.fleet import PlacementSpec

UP, DRAINING, LOST = HostState.UP, HostState.DRAINING, HostState.LOST


def host(name: str, zone: str = "a", state: HostState = UP) -> PlacementHost:
    return PlacementHost(name, {"zone": zone}, state)


# -- examples ---------------------------------------------------------------------------------------

def test_per_host_fills_every_up_host_and_keeps_slot_numbers() -> None:
    hosts = [host("web-2"), host("web-1"), host("web-3", state=DRAINING)]
    first = place(hosts, PlacementSpec(per_host=2), {})
    assert first.slots == {0: "web-1", 1: "web-1", 2: "web-2", 3: "web-2"}
    hosts.append(host("web-4"))
    second = place(hosts, PlacementSpec(per_host=2), first.slots)
    assert changes(first.slots, second) == changes(first.slots, Assignment({**first.slots, 4: "web-4", 5: "web-4"}))
    assert second.on("web-4") == [4, 5]


def test_a_lost_host_has_its_slots_moved_with_their_numbers() -> None:
    current = {0: "a1", 1: "b1", 2: "a2", 3: "b2", 4: "a1", 5: "b1"}
    hosts = [host("a1", "a", LOST), host("a2", "a"), host("b1", "b"), host("b2", "b")]
    desired = place(hosts, PlacementSpec(total=6, spread="zone"), current)
    assert desired.counts() == {"a2": 3, "b1": 2, "b2": 1}
    diff = changes(current, desired)
    assert diff.moved == {0: ("a1", "a2"), 4: ("a1", "a2")} and not diff.added and not diff.removed


def test_the_even_spread_that_keeps_most_is_chosen() -> None:
    """Zone a holds 4 on one host, zone b 2+2: the odd 7th instance goes to zone b, where it stays."""
    current = {0: "a1", 1: "a1", 2: "a1", 3: "a1", 4: "b1", 5: "b1", 6: "b2", 7: "b2"}
    hosts = [host("a1", "a"), host("a2", "a"), host("b1", "b"), host("b2", "b")]
    desired = place(hosts, PlacementSpec(total=7, spread="zone"), current)
    assert desired.counts() == {"a1": 2, "a2": 1, "b1": 2, "b2": 2}
    assert len(changes(current, desired).kept) == 6


def test_max_per_host_caps_and_overflows_to_other_zones() -> None:
    hosts = [host("a1", "a"), host("b1", "b"), host("b2", "b"), host("b3", "b")]
    desired = place(hosts, PlacementSpec(total=6, spread="zone", max_per_host=2), {})
    assert desired.counts() == {"a1": 2, "b1": 2, "b2": 1, "b3": 1}


@pytest.mark.parametrize(("hosts", "placement", "message"), [
    ([host("a", state=LOST), host("b", state=DRAINING)], PlacementSpec(per_host=1),
     "no host can take instances (hosts: a lost, b draining)"),
    ([], PlacementSpec(total=1), "no host can take instances (hosts: none)"),
    ([host("a"), host("b"), host("c", state=LOST)], PlacementSpec(total=5, max_per_host=2),
     "placement.total 5 does not fit on the 2 usable host(s) at max_per_host 2 (at most 4)"),
    ([host("a"), PlacementHost("b")], PlacementSpec(total=2, spread="zone"), "host b has no label 'zone' to spread by"),
])
def test_placements_that_cannot_be_met(hosts: list[PlacementHost], placement: PlacementSpec, message: str) -> None:
    with pytest.raises(PlacementError) as info:
        place(hosts, placement, {})
    assert info.value.message == message and info.value.hint


def test_duplicate_host_names_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="unique"):
        place([host("a"), host("a")], PlacementSpec(per_host=1), {})


def test_placement_is_pure() -> None:
    tree = ast.parse(inspect.getsource(placement_module))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "heapq", "collections", "dataclasses", "enum", "shipyard"}, imported


# -- properties -------------------------------------------------------------------------------------

NAMES = [f"h{i}" for i in range(6)]


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[PlacementHost], PlacementSpec, dict[int, str]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    hosts = [PlacementHost(n, {"zone": draw(st.sampled_from("abc"))},
                           draw(st.sampled_from([UP, UP, UP, DRAINING, LOST]))) for n in names]
    if draw(st.booleans()):
        spec = PlacementSpec(per_host=draw(st.integers(1, 3)))
    else:
        spec = PlacementSpec(total=draw(st.integers(1, 9)), spread=draw(st.sampled_from([None, "zone"])),
                             max_per_host=draw(st.sampled_from([None, 1, 2, 3])))
    current = draw(st.dictionaries(st.integers(0, 14), st.sampled_from([*NAMES, "gone"]), max_size=10))
    return hosts, spec, current


def group_of(h: PlacementHost, spec: PlacementSpec) -> str:
    return h.labels["zone"] if spec.spread else h.name


def even(counts: dict[str, int], room: dict[str, int | None]) -> bool:
    """max - min <= 1, except that a group at its capacity may sit lower."""
    return all(counts[x] <= counts[y] + 1 or counts[y] == room[y] for x in counts for y in counts)


def balanced(quota: dict[str, int], up: list[PlacementHost], spec: PlacementSpec) -> bool:
    cap = spec.max_per_host
    groups: dict[str, list[str]] = {}
    for h in up:
        groups.setdefault(group_of(h, spec), []).append(h.name)
    totals = {g: sum(quota[m] for m in members) for g, members in groups.items()}
    room = {g: None if cap is None else cap * len(members) for g, members in groups.items()}
    return even(totals, room) and all(even({m: quota[m] for m in members}, {m: cap for m in members})
                                      for members in groups.values())


def splits(total: int, hosts: list[str], cap: int | None) -> Iterator[dict[str, int]]:
    if not hosts:
        if total == 0:
            yield {}
        return
    for n in range(min(total, cap if cap is not None else total) + 1):
        for rest in splits(total - n, hosts[1:], cap):
            yield {hosts[0]: n, **rest}


def best_kept(up: list[PlacementHost], spec: PlacementSpec, current: dict[int, str]) -> int:
    held = {h.name: sum(1 for v in current.values() if v == h.name) for h in up}
    if spec.per_host is not None:
        return sum(min(spec.per_host, n) for n in held.values())
    assert spec.total is not None
    return max(sum(min(q[h], held[h]) for h in q)
               for q in splits(spec.total, [h.name for h in up], spec.max_per_host) if balanced(q, up, spec))


@settings(max_examples=300, deadline=None, database=None)
@given(fleets(), st.randoms(use_true_random=False))
def test_even_spread_with_the_fewest_moves_never_on_unusable_hosts(
        fleet: tuple[list[PlacementHost], PlacementSpec, dict[int, str]], rng: random.Random) -> None:
    hosts, spec, current = fleet
    up = [h for h in hosts if h.state is UP]
    if not up or (spec.total is not None and spec.max_per_host is not None and spec.total > spec.max_per_host * len(up)):
        with pytest.raises(PlacementError):
            place(hosts, spec, current)
        return
    desired = place(hosts, spec, current)
    counts = desired.counts()
    assert set(counts) <= {h.name for h in up}                                  # never on lost / draining
    assert len(desired.slots) == (spec.per_host * len(up) if spec.per_host else spec.total)
    quota = {h.name: counts.get(h.name, 0) for h in up}
    if spec.per_host:
        assert set(quota.values()) == {spec.per_host}
    else:
        assert balanced(quota, up, spec)                                      # spread evenly
    diff = changes(current, desired)
    assert len(diff.kept) == best_kept(up, spec, current)                      # the fewest moves
    assert not set(diff.added) & set(current)
    assert place(hosts, spec, desired.slots) == desired                        # stable: nothing moves again
    shuffled_hosts, shuffled_current = hosts[:], list(current.items())
    rng.shuffle(shuffled_hosts)
    rng.shuffle(shuffled_current)
    assert place(shuffled_hosts, spec, dict(shuffled_current)) == desired     # deterministic, order-free


@settings(max_examples=150, deadline=None, database=None)
@given(fleets(), st.data())
def test_losing_a_host_moves_only_what_must_move(
        fleet: tuple[list[PlacementHost], PlacementSpec, dict[int, str]], data: st.DataObject) -> None:
    hosts, spec, _ = fleet
    up = [h for h in hosts if h.state is UP]
    if len(up) < 2 or spec.total is not None and spec.max_per_host is not None \
            and spec.total > spec.max_per_host * (len(up) - 1):
        return
    before = place(hosts, spec, {})
    victim = data.draw(st.sampled_from(up))
    after_hosts = [PlacementHost(h.name, h.labels, LOST if h == victim else h.state) for h in hosts]
    after = place(after_hosts, spec, before.slots)
    diff = changes(before.slots, after)
    assert victim.name not in after.counts()
    assert set(before.on(victim.name)) <= set(diff.moved) | set(diff.removed)
    if spec.per_host is not None:          # nothing else has a reason to move
        assert set(diff.moved) | set(diff.removed) == set(before.on(victim.name))
    up_after = [h for h in after_hosts if h.state is UP]
    assert len(diff.kept) == best_kept(up_after, spec, before.slots)
