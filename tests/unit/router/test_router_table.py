"""The routing table as a value: weight validation, user buckets, aliases, wire format."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shipyard.errors import RouterError
from shipyard.router.table import BUCKETS, RoutingTable, TableError, Upstream, user_bucket

TRACKS = {"blue": (Upstream("b0", "127.0.0.1", 9001),), "green": (Upstream("g0", "127.0.0.1", 9002),)}
ALIASES = {"canary": "green", "stable": "blue"}


def canary(weight: float, **kw: object) -> RoutingTable:
    return RoutingTable("shop", 1, dict(TRACKS), {"green": weight, "blue": 100 - weight},
                        bucket_order=("green", "blue"), aliases=dict(ALIASES), **kw)  # type: ignore[arg-type]


def test_weights_in_hundredths_validate() -> None:
    for w in (0.01, 0.5, 1, 12.34, 99.5, 99.99, 100, 0):
        t = canary(w)
        assert t.weights["green"] == pytest.approx(w) and sum(t.weights.values()) == pytest.approx(100)
    assert RoutingTable("shop", 1, dict(TRACKS), {"blue": 0.1, "green": 0.2 + 99.7}).weights == {
        "blue": 0.1, "green": 99.9}  # float noise within 1e-6 is tolerated and normalised
    assert RoutingTable("shop").weights == {} and RoutingTable("shop").track_for() is None


@pytest.mark.parametrize(("weights", "message"), [
    ({"green": 0.001, "blue": 99.999}, "weight 0.001 of track 'green' is finer than 0.01 (users are split "
                                       "into 10,000 buckets): use a multiple of 0.01"),
    ({"green": 0.5, "blue": 99.49}, "track weights must add up to 100, got 99.99 (blue=99.49, green=0.5)"),
    ({"green": 60}, "track weights must add up to 100, got 60 (green=60)"),
    ({"green": -1, "blue": 101}, "weight of track 'green' must be a percent from 0 to 100, got -1"),
    ({"green": "50", "blue": 50}, "weight of track 'green' must be a percent from 0 to 100, got '50'"),
    ({"red": 100}, "weight given for unknown track 'red' (tracks: blue, green)"),
])
def test_bad_weights_are_refused_with_a_clear_message(weights: dict[str, float], message: str) -> None:
    with pytest.raises(TableError) as info:
        RoutingTable("shop", 1, dict(TRACKS), weights)
    assert info.value.message == message
    assert isinstance(info.value, RouterError) and isinstance(info.value, ValueError)


def test_bad_order_and_aliases_are_refused() -> None:
    with pytest.raises(TableError, match="bucket_order names unknown track 'red'"):
        RoutingTable("shop", 1, dict(TRACKS), {"blue": 100}, bucket_order=("red",))
    with pytest.raises(TableError, match="bucket_order lists a track twice"):
        RoutingTable("shop", 1, dict(TRACKS), {"blue": 100}, bucket_order=("blue", "blue"))
    with pytest.raises(TableError, match="alias 'canary' points to unknown track 'red'"):
        RoutingTable("shop", 1, dict(TRACKS), {"blue": 100}, aliases={"canary": "red"})
    with pytest.raises(TableError, match="alias 'blue' is also a track name"):
        RoutingTable("shop", 1, dict(TRACKS), {"blue": 100}, aliases={"blue": "green"})


def test_the_first_track_of_the_order_takes_the_lowest_buckets() -> None:
    assert canary(12.34).bucket_ranges() == [("green", 0, 1234), ("blue", 1234, BUCKETS)]
    t = canary(0.5)
    assert [t.track_at(b) for b in (0, 49, 50, 9999)] == ["green", "green", "blue", "blue"]
    assert canary(100).bucket_ranges() == [("green", 0, BUCKETS)]
    # without an order, tracks follow in name order
    plain = RoutingTable("shop", 1, dict(TRACKS), {"blue": 30, "green": 70})
    assert plain.bucket_ranges() == [("blue", 0, 3000), ("green", 3000, BUCKETS)]


def test_raising_the_weight_only_moves_users_to_the_canary() -> None:
    users = [f"user-{i}" for i in range(5000)]
    on_canary: set[str] = set()
    for w in (0.5, 1, 5, 25, 50, 99.99, 100):
        now = {u for u in users if canary(w).track_for(user_key=u) == "green"}
        assert on_canary <= now, f"users went back to stable at {w}%"
        assert now == {u for u in users if user_bucket(u) < w * 100}
        on_canary = now
    assert on_canary == set(users)


def test_user_buckets_are_stable_and_uniform() -> None:
    assert user_bucket("alice") == user_bucket(b"alice") == user_bucket("alice")
    assert user_bucket("ü") == user_bucket("ü".encode())
    counts = Counter(user_bucket(f"u{i}") // 1000 for i in range(20000))
    assert len(counts) == 10 and all(1700 < c < 2300 for c in counts.values()), counts


def test_user_bucket_is_the_crc32_haproxy_computes() -> None:
    """Pinned values: HAProxy 2.6's `crc32,mod(10000)` gave these for the same keys (so a change
    of hash here, which would move every user, fails before any integration test runs)."""
    assert user_bucket("alice") == 5735 and user_bucket("bob") == 7104 and user_bucket("127.0.0.1") == 3832


def test_user_buckets_are_uniform_over_100k_keys_of_each_kind() -> None:
    """Chi-squared over 100 bins of 100 buckets (99 degrees of freedom: mean 99, sd 14); 180 is
    far in the tail, and a hash biased by 10 % on one bin exceeds it."""
    kinds = {"names": [f"user-{i}" for i in range(100_000)],
             "addresses": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)],
             "random": [f"{random.Random(i).getrandbits(64):x}" for i in range(100_000)]}
    for kind, keys in kinds.items():
        counts = Counter(user_bucket(k) // 100 for k in keys)
        chi2 = sum((counts[b] - 1000) ** 2 / 1000 for b in range(100))
        assert chi2 < 180, (kind, chi2)


def test_overrides_and_aliases() -> None:
    t = canary(1)
    assert t.track_for("canary", "alice") == "green" and t.track_for("stable") == "blue"
    assert t.track_for("green") == "green" and t.track_for("blue") == "blue"
    assert t.track_for("nope", "alice") == t.track_for(None, "alice")


def test_requests_without_a_key_split_by_weight() -> None:
    t = canary(30)
    rnd = random.Random(7)
    got = Counter(t.track_for(rnd=rnd) for _ in range(20000))
    assert abs(got["green"] - 6000) < 5 * (20000 * 0.3 * 0.7) ** 0.5, got


def test_wire_format_round_trip_and_older_tables() -> None:
    t = canary(2.5, sticky_header="X-User-Id", sticky_cookie="uid", sticky_client_address=True)
    d = t.to_dict()
    assert d["bucket_order"] == ["green", "blue"] and d["aliases"] == ALIASES
    assert d["sticky_client_address"] is True and d["weights"] == {"green": 2.5, "blue": 97.5}
    assert RoutingTable.from_dict(d) == t
    old = {"service": "shop", "version": 3, "tracks": {"blue": [{"id": "b0", "host": "127.0.0.1", "port": 9001}]},
           "weights": {"blue": 100}, "sticky_header": None, "sticky_cookie": None}
    loaded = RoutingTable.from_dict(old)
    assert (loaded.bucket_order, loaded.aliases, loaded.sticky_client_address) == ((), {}, False)
    assert loaded.track_for(user_key="anyone") == "blue"
    assert loaded.releases == {}
    moved = t.with_weights({"green": 5, "blue": 95})
    assert (moved.version, moved.aliases, moved.bucket_order) == (2, ALIASES, ("green", "blue"))
    released = canary(10, releases={"green": "c0ffee", "blue": "beef"})
    assert RoutingTable.from_dict(released.to_dict()).releases == {"green": "c0ffee", "blue": "beef"}
    assert released.with_weights({"green": 20, "blue": 80}).releases == released.releases
    with pytest.raises(TableError, match="release given for unknown track 'red'"):
        canary(10, releases={"red": "c0ffee"})
    assert moved.bucket_ranges()[0] == ("green", 0, 500)
