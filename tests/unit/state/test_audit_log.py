"""The audit log on the real SQLite store: append-only, ordered, attributed, no secrets."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.state.audit import DAEMON_ACTOR, RejectionThrottle, scrub
from shipyard.state.sqlite import SqliteStore

ALICE = "alice@box via token 0123abcd"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        yield s
    finally:
        s.close()


def rollout(rid: str = "shop-1", phase: Phase = Phase.STARTING, strategy: str = "blue_green",
            reason: str = "") -> Rollout:
    return Rollout(rid, "shop", Kind.DEPLOY, phase, "green", "blue", "img2", "img1", reason=reason,
                   strategy=strategy, timings={"starting": 1.5})


def test_entries_cannot_be_changed_or_deleted(store: SqliteStore, tmp_path: Path) -> None:
    e = store.audit.record("deploy", actor=ALICE, service="shop", why="deploy shop.yaml", evidence={"a": 1})
    other = sqlite3.connect(tmp_path / "state.db")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("UPDATE audit SET actor='mallory' WHERE id=?", (e.id,))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("DELETE FROM audit")
    finally:
        other.close()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE audit SET why='' WHERE id=?", (e.id,))
    assert store.audit.entries() == [e]


def test_a_request_is_logged_before_its_consequences_and_once(store: SqliteStore) -> None:
    store.put_rollout(rollout(phase=Phase.AWAITING_PROMOTION))
    pending = store.audit.begin("abort", actor=ALICE, service="shop", why="aborted by user",
                                rollout_id="shop-1")
    store.put_rollout(rollout(phase=Phase.ABORTED, reason="aborted by user"))
    store.add_event("shop", "rollout.aborted", "deploy shop-1 aborted", "shop-1")   # before the request ends
    store.audit.finish(pending)
    got = [(e.action, e.actor, e.rollout_id, e.why) for e in store.audit.entries("shop")]
    assert got == [("abort", ALICE, "shop-1", "aborted by user"),
                   ("rollout.aborted", DAEMON_ACTOR, "shop-1", "aborted by user")]
    outcome = store.audit.entries("shop")[-1].evidence
    assert (outcome["image"], outcome["previous_image"], outcome["seconds"]) == ("img2", "img1", 1.5)


def test_a_deploy_takes_the_service_and_id_of_the_rollout_it_creates(store: SqliteStore) -> None:
    pending = store.audit.begin("deploy", actor=ALICE, service=None, why="deploy /x/shop.yaml",
                                evidence={"spec_path": "/x/shop.yaml"})
    assert store.audit.entries() == []
    store.add_event("shop", "rollout.created", "deploy shop-1: new release goes to slot blue", "shop-1")
    assert [e.rollout_id for e in store.audit.entries()] == ["shop-1"]
    store.audit.finish(pending)
    assert len(store.audit.entries()) == 1, "finish must not write the entry twice"
    entry = store.audit.entries()[0]
    assert (entry.service, entry.action, entry.evidence) == ("shop", "deploy", {"spec_path": "/x/shop.yaml"})


def test_a_refused_request_leaves_no_entry_but_a_half_done_one_says_so(store: SqliteStore) -> None:
    refused = store.audit.begin("promote", actor=ALICE, service="shop", why="promote")
    assert store.audit.finish(refused, failed="nothing to promote") is None
    assert store.audit.entries() == []
    removing = store.audit.begin("remove", actor=ALICE, service="shop", why="remove service shop")
    store.add_event("shop", "slot.torn_down", "slot blue torn down (service removed)", None, {"slot": "blue"})
    store.audit.finish(removing, failed="router did not stop")
    assert [(e.action, e.actor) for e in store.audit.entries()] == [
        ("remove", ALICE), ("slot.teardown", DAEMON_ACTOR), ("remove.failed", ALICE)]
    assert store.audit.entries()[1].evidence == {"slot": "blue"}


def test_daemon_decisions_outside_rollouts_only(store: SqliteStore) -> None:
    store.add_event("shop", "instance.died", "instance shop-blue-1 (pid 9) exited; replacing it", None,
                    {"instance": "shop-blue-1", "slot": "blue"})
    store.add_event("shop", "slot.torn_down", "slot green torn down (rollout shop-2 failed)", "shop-2",
                    {"slot": "green"})
    store.add_event("shop", "instance.healthy", "instance shop-blue-2 is healthy")
    entries = store.audit.entries()
    assert [(e.action, e.actor, e.evidence["instance"]) for e in entries] == [
        ("instance.replace", DAEMON_ACTOR, "shop-blue-1")]


def test_automatic_abort_carries_the_analysis_verdicts(store: SqliteStore) -> None:
    r = rollout(strategy="canary", phase=Phase.ABORTED, reason="analysis failed: success rate 0.81 < 0.99")
    store.put_rollout(r)
    store.put_analysis(r.id, {"status": "failed", "state": {"big": "internal"}, "verdicts": [
        {"metric": "success-rate", "kind": "threshold", "status": "failed", "detail": "0.81 < 0.99",
         "extra": 1}]})
    store.add_event("shop", "rollout.aborted", "deploy shop-1 aborted", r.id)
    e = store.audit.entries()[-1]
    assert e.why == "analysis failed: success rate 0.81 < 0.99" and e.actor == DAEMON_ACTOR
    assert e.evidence["analysis"] == {"status": "failed", "verdicts": [
        {"metric": "success-rate", "kind": "threshold", "status": "failed", "detail": "0.81 < 0.99"}]}


def test_allow_unsafe_is_attributed_to_who_started_the_rollout(store: SqliteStore) -> None:
    p = store.audit.begin("deploy", actor=ALICE, service=None, why="orders is empty",
                          evidence={"allow_unsafe": "orders is empty"})
    # the controller states the intent before `rollout.created`: it belongs to the deploy entry
    store.add_event("shop", "audit.allow_unsafe", "shop-1 may apply unsafe migrations: orders is empty",
                    "shop-1", {"reason": "orders is empty"})
    store.add_event("shop", "rollout.created", "deploy shop-1", "shop-1")
    store.audit.finish(p)
    assert [(e.action, e.actor, e.rollout_id) for e in store.audit.entries()] == [("deploy", ALICE, "shop-1")]
    store.add_event("shop", "audit.allow_unsafe", "unsafe migrations allowed: orders is empty", "shop-1",
                    {"reason": "orders is empty", "findings": [
                        {"rule": "add-column-default-volatile", "location": "0002.sql:1",
                         "lock": "ACCESS EXCLUSIVE", "message": "rewrites", "fix": "long text",
                         "statement": "ALTER ..."}]})
    e = store.audit.entries()[-1]
    assert (e.action, e.actor, e.why) == ("allow_unsafe", ALICE, "orders is empty")
    assert e.evidence["findings"] == [{"rule": "add-column-default-volatile", "location": "0002.sql:1",
                                       "lock": "ACCESS EXCLUSIVE", "message": "rewrites"}]


def test_secrets_are_scrubbed_from_evidence_and_why(store: SqliteStore) -> None:
    e = store.audit.record("deploy", actor=ALICE, service="shop", why="db at postgresql://u:hunter2@db/shop",
                           evidence={"token": "s3cret", "nested": {"Password": "pw"},
                                     "secret_env": ["API_KEY"], "url": "postgresql://u:hunter2@db/shop"})
    text = repr(store.audit.entries())
    assert "hunter2" not in text and "s3cret" not in text and "'pw'" not in text
    assert e.evidence["secret_env"] == ["API_KEY"] and e.evidence["url"] == "postgresql://u:***@db/shop"
    assert scrub({"token": ""}) == {"token": ""}


def test_entries_filter_limit_and_order(store: SqliteStore) -> None:
    for i in range(5):
        store.audit.record("deploy", actor=ALICE, service="shop" if i % 2 == 0 else "blog", why=str(i))
    assert [e.why for e in store.audit.entries("shop")] == ["0", "2", "4"]
    assert [e.why for e in store.audit.entries(limit=2)] == ["3", "4"]
    assert [e.why for e in store.audit.entries(since=store.audit.entries()[2].id)] == ["3", "4"]


def test_rejections_are_throttled_per_address_and_counted() -> None:
    t = RejectionThrottle(window=10.0, max_addresses=2)
    assert t.admit("10.0.0.1", 0.0) == 0
    assert [t.admit("10.0.0.1", s) for s in (1.0, 2.0, 9.9)] == [None, None, None]
    assert t.admit("10.0.0.2", 3.0) == 0
    assert t.admit("10.0.0.3", 4.0) is None, "table full of fresh addresses: not recorded, not remembered"
    assert t.admit("10.0.0.1", 10.5) == 3
    assert t.admit("10.0.0.3", 14.0) == 0, "stale addresses make room"


def test_the_outcome_is_logged_once_at_the_phase_change(store: SqliteStore) -> None:
    store.put_rollout(rollout(phase=Phase.FAILED, reason="preview check GET / on slot green answered 500"))
    store.add_event("shop", "rollout.phase", "shop-1 -> failed: preview check ...", "shop-1",
                    {"phase": "failed", "observation": "PreviewFailed"})
    store.add_event("shop", "rollout.phase", "shop-1 -> previewing", "shop-1", {"phase": "previewing"})
    store.add_event("shop", "rollout.failed", "deploy shop-1 failed: preview check ...", "shop-1")
    assert [(e.action, e.why) for e in store.audit.entries()] == [
        ("rollout.failed", "preview check GET / on slot green answered 500")]
