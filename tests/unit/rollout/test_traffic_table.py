"""Deriving the routing table from slots and instance health."""

from __future__ import annotations

from shipyard.rollout.records import Instance, ServiceRecord, Slot
from shipyard.rollout.traffic import build_table


def inst(iid: str, slot: str, port: int) -> Instance:
    return Instance(iid, "shop", slot, "img", "127.0.0.1", port, 1, 1, "/l", "/d")


def test_live_slot_gets_all_traffic_and_new_slot_is_preview_only() -> None:
    svc = ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue")
    t = build_table(svc, [(inst("b0", "blue", 1), "healthy"), (inst("g0", "green", 2), "healthy"),
                          (inst("g1", "green", 3), "starting")], version=7)
    assert t.version == 7
    assert t.weights == {"blue": 100}
    assert [u.id for u in t.tracks["green"]] == ["g0"]
    assert t.track_for() == "blue"
    assert t.track_for(override="green") == "green"


def test_no_live_slot_means_no_weights() -> None:
    svc = ServiceRecord("shop", "127.0.0.1:8080")
    t = build_table(svc, [(inst("g0", "green", 2), "healthy")], version=1)
    assert t.weights == {} and t.track_for() is None


def test_live_slot_without_healthy_instances_still_routes_to_live_processes() -> None:
    svc = ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue")
    t = build_table(svc, [(inst("b0", "blue", 1), "unhealthy")], version=1)
    assert t.weights == {"blue": 100} and [u.id for u in t.tracks["blue"]] == ["b0"]


def test_each_track_names_the_release_its_slot_holds() -> None:
    svc = ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue",
                        slots={"blue": Slot("live", "img-blue"), "green": Slot("starting", "img-green")})
    t = build_table(svc, [(inst("b0", "blue", 1), "healthy"), (inst("g0", "green", 2), "healthy")], version=2)
    assert t.releases == {"blue": "img-blue", "green": "img-green"}
    svc.slots["green"] = Slot()                              # no image recorded: no release claimed
    assert build_table(svc, [(inst("b0", "blue", 1), "healthy"), (inst("g0", "green", 2), "healthy")],
                       version=3).releases == {"blue": "img-blue"}


def test_the_router_limits_of_the_spec_are_carried_by_the_table() -> None:
    from shipyard.spec import RouterSpec

    svc = ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue")
    healthy = [(inst("b0", "blue", 1), "healthy")]
    t = build_table(svc, healthy, version=1, limits=RouterSpec(max_conns_per_instance=8, queue_size=10,
                                                                 queue_timeout=1.5, per_try_timeout=0.5))
    assert (t.max_conns_per_instance, t.queue_size, t.queue_timeout, t.per_try_timeout) == (8, 10, 1.5, 0.5)
    d = build_table(svc, healthy, version=1)
    assert (d.max_conns_per_instance, d.queue_size, d.queue_timeout, d.per_try_timeout) == (64, 4096, 5.0, 0.0)
