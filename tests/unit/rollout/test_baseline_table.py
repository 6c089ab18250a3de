"""The routing table of a canary with a baseline: equal shares for canary and baseline while the
canary takes at most 50 %, and a canary user never leaves the canary as the weight rises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState
from shipyard.rollout.traffic import build_table
from shipyard.router.table import BUCKETS, user_bucket


def inst(iid: str, slot: str, port: int) -> Instance:
    return Instance(iid, "shop", slot, "img", "127.0.0.1", port, 1, 1, "/l", "/d")


HEALTHY = [(inst("b0", "blue", 1), "healthy"), (inst("g0", "green", 2), "healthy"),
           (inst("s0", "baseline", 3), "healthy")]


def service(weight: float, baseline: bool = True) -> ServiceRecord:
    slots = {"blue": Slot(SlotState.LIVE, "img-v1"), "green": Slot(SlotState.CANARY, "img-v2", weight=weight)}
    if baseline:
        slots["baseline"] = Slot(SlotState.BASELINE, "img-v1")
    return ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue", slots=slots)


def buckets_of(weight: float) -> dict[str, int]:
    t = build_table(service(weight), HEALTHY, version=1)
    counts: dict[str, int] = {}
    for name, first, end in t.bucket_ranges():
        counts[name] = counts.get(name, 0) + end - first
    return counts


def test_canary_and_baseline_take_equal_shares_and_the_track_header_reaches_the_baseline() -> None:
    t = build_table(service(10), HEALTHY, version=1, preview_token="tok")
    assert t.weights == {"green": 10, "baseline": 10, "blue": 80}
    assert [(n, a, b) for n, a, b in t.bucket_ranges()] == [("green", 0, 1000), ("baseline", 1000, 2000),
                                                            ("blue", 2000, BUCKETS)]
    assert t.track_for(override="baseline") == "baseline"
    assert t.aliases == {"stable": "blue", "canary": "green"}


def test_above_half_the_baseline_takes_no_users_but_stays_reachable() -> None:
    t = build_table(service(75), HEALTHY, version=1)
    assert t.weights == {"green": 75, "blue": 25}
    assert t.track_for(override="baseline") == "baseline"
    assert build_table(service(50), HEALTHY, version=1).weights == {"green": 50, "baseline": 50}


def test_without_a_baseline_slot_nothing_changes() -> None:
    t = build_table(service(10, baseline=False), HEALTHY[:2], version=1)
    assert t.weights == {"green": 10, "blue": 90} and "baseline" not in t.tracks


def test_an_unhealthy_baseline_takes_no_users() -> None:
    t = build_table(service(10), [*HEALTHY[:2], (inst("s0", "baseline", 3), "starting")], version=1)
    assert t.weights == {"green": 10, "blue": 90}


weights = st.integers(min_value=1, max_value=10_000).map(lambda u: u / 100)


@settings(max_examples=200, deadline=None)
@given(w=weights)
def test_canary_and_baseline_own_the_same_number_of_buckets_up_to_half(w: float) -> None:
    counts = buckets_of(w)
    assert counts["green"] == round(w * 100)
    if w <= 50:
        assert counts["baseline"] == counts["green"]
    else:
        assert "baseline" not in counts
    assert sum(counts.values()) == BUCKETS


@settings(max_examples=200, deadline=None)
@given(a=weights, b=weights, users=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30))
def test_a_canary_user_stays_on_the_canary_as_the_weight_rises(a: float, b: float, users: list[str]) -> None:
    low, high = sorted((a, b))
    before = build_table(service(low), HEALTHY, version=1)
    after = build_table(service(high), HEALTHY, version=2)
    for u in users:
        if before.track_at(user_bucket(u)) == "green":
            assert after.track_at(user_bucket(u)) == "green"


def test_metrics_report_the_split_the_table_serves() -> None:
    from shipyard.server.metrics.traffic import track_weights

    for w in (10.0, 50.0, 75.0):
        table = build_table(service(w), HEALTHY, version=1)
        assert {t: v for t, v in track_weights(service(w)).items() if v > 0} == table.weights
