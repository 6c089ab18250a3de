"""fleet_slots.arrange / host_for_one: which running instances a slot keeps, which it drops
and on which hosts it starts new ones, for the hosts as they are (some lost)."""

from __future__ import annotations

from pathlib import Path

from shipyard.engine.fleet_slots import arrange, host_for_one, target
from shipyard.rollout.records import Instance
from shipyard.spec import Spec

A = [f"10.9.0.{n}" for n in range(1, 6)]


def spec(placement: dict[str, int]) -> Spec:
    doc = {"service": "shop", "listen": "127.0.0.1:8080", "build": {"context": "."},
           "run": {"command": ["app", "--host", "${HOST}"]},
           "fleet": {"hosts": [{"name": f"web-{n}", "address": a} for n, a in enumerate(A, 1)],
                     "ssh": {"user": "deploy", "identity": "id"}, "placement": placement}}
    return Spec.from_json_dict(doc, Path("/"))


def inst(n: int, host: str) -> Instance:
    return Instance(f"shop-blue-{n}", "shop", "blue", "img", host, 8000 + n, n, n, "/l", "/d")


def test_per_host_starts_on_every_empty_host_and_keeps_what_runs() -> None:
    running = [inst(1, A[0]), inst(2, A[3])]
    got = arrange(spec({"per_host": 1}), set(), running)
    assert got.keep == running and got.drop == []
    assert sorted(got.new) == [A[1], A[2], A[4]]


def test_a_lost_host_takes_nothing_and_its_instance_is_dropped() -> None:
    s = spec({"per_host": 1})
    running = [inst(n, a) for n, a in enumerate(A)]
    got = arrange(s, {A[2]}, running)
    assert [i.host for i in got.drop] == [A[2]] and got.new == []
    assert target(s, {A[2]}) == 4

    total = spec({"total": 5, "max_per_host": 2})
    got = arrange(total, {A[2]}, running)
    assert [i.host for i in got.drop] == [A[2]] and len(got.new) == 1 and got.new[0] != A[2]
    assert target(total, {A[2]}) == 5


def test_starts_under_way_count_as_placed() -> None:
    s = spec({"per_host": 1})
    got = arrange(s, set(), [inst(1, A[0])], pending=[A[1], A[2]])
    assert sorted(got.new) == [A[3], A[4]]


def test_surplus_is_dropped_and_a_canary_share_is_placed_on_few_hosts() -> None:
    s = spec({"per_host": 1})
    running = [inst(1, A[0]), inst(2, A[0])]
    got = arrange(s, set(), running)
    assert len(got.keep) == 1 and len(got.drop) == 1 and len(got.new) == 4
    assert len(arrange(s, set(), [], want=2).new) == 2


def test_one_replacement_goes_where_there_is_room_else_beside_the_fewest() -> None:
    s = spec({"per_host": 1})
    running = [inst(n, a) for n, a in enumerate(A) if a != A[3]]
    assert host_for_one(s, set(), running, []) == A[3]
    full = [inst(n, a) for n, a in enumerate(A)] + [inst(9, A[0])]
    assert host_for_one(s, set(), full, []) == A[1]       # placement is full: the least loaded host
