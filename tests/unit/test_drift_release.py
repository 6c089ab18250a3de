"""Release drift: the service record (desired) against the instance records (actual)."""

from __future__ import annotations

from shipyard.drift.release import release_findings
from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState

A, B = "a" * 64, "b" * 64


def inst(iid: str, slot: str, image: str) -> Instance:
    return Instance(iid, "shop", slot, image, "127.0.0.1", 9000, 100, 1, "/x/log", "/x/data")


def service(**slots: Slot) -> ServiceRecord:
    rec = ServiceRecord("shop", "127.0.0.1:8000", active_slot="blue")
    rec.slots.update(slots)
    return rec


def changes(findings: list) -> list[tuple[str | None, str]]:
    return [(f.instance_id, f.evidence["change"]) for f in findings]


def test_matching_release_is_clean() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 2}))
    insts = [(inst("b1", "blue", A), "healthy"), (inst("b2", "blue", A), "healthy")]
    assert release_findings(svc, insts) == []


def test_instance_running_another_image_than_its_slot() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 1}))
    found = release_findings(svc, [(inst("b1", "blue", B), "healthy")])
    assert ("b1", "wrong_image") in changes(found)
    # and it does not count toward the slot's replicas
    assert (None, "too_few_instances") in changes(found)
    wrong = next(f for f in found if f.evidence["change"] == "wrong_image")
    assert wrong.evidence["expected_image_id"] == A and wrong.evidence["actual_image_id"] == B


def test_idle_slot_with_a_live_instance_should_be_gone() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 1}), green=Slot(SlotState.IDLE, None))
    found = release_findings(svc, [(inst("b1", "blue", A), "healthy"), (inst("g1", "green", B), "healthy")])
    assert changes(found) == [("g1", "slot_should_be_gone")]


def test_retired_warm_slot_still_up_after_the_grace() -> None:
    warm = Slot(SlotState.WARM, B, {"replicas": 1}, retire_at=1000.0)
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 1}), green=warm)
    insts = [(inst("b1", "blue", A), "healthy"), (inst("g1", "green", B), "healthy")]
    assert release_findings(svc, insts, now=1000.0 + 30, retire_grace=60) == []
    assert changes(release_findings(svc, insts, now=1000.0 + 61, retire_grace=60)) == [("g1", "slot_should_be_gone")]


def test_live_slot_with_fewer_running_instances_than_desired() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 3}))
    insts = [(inst("b1", "blue", A), "healthy"), (inst("b2", "blue", A), "healthy"),
             (inst("b3", "blue", A), "stopped")]
    found = release_findings(svc, insts)
    assert changes(found) == [(None, "too_few_instances")]
    assert found[0].evidence["desired"] == 3 and found[0].evidence["running"] == 2
    # a recorded live instance whose process is gone does not count either
    assert release_findings(svc, insts[:2], gone={"b2"})[0].evidence["running"] == 1


def test_canary_replicas_come_from_the_slot() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 1}),
                  green=Slot(SlotState.CANARY, B, {"replicas": 4}, weight=5.0, replicas=1))
    insts = [(inst("b1", "blue", A), "healthy"), (inst("g1", "green", B), "healthy")]
    assert release_findings(svc, insts) == []


def test_slots_a_rollout_is_moving_are_left_alone() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 1}), green=Slot(SlotState.STARTING, B, {"replicas": 2}))
    insts = [(inst("b1", "blue", A), "healthy"), (inst("g1", "green", A), "starting")]
    assert ("g1", "wrong_image") in changes(release_findings(svc, insts))
    assert release_findings(svc, insts, in_rollout=True) == []


def test_instance_in_a_slot_the_service_does_not_have() -> None:
    svc = service(blue=Slot(SlotState.LIVE, A, {"replicas": 1}))
    found = release_findings(svc, [(inst("b1", "blue", A), "healthy"), (inst("x1", "purple", A), "healthy")])
    assert changes(found) == [("x1", "unknown_slot")]
