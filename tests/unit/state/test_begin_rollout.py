"""Store.begin_rollout: the check "no rollout of this service in progress", the numbering and
the insert are one step (issue 13), on SQLite and on the tests' in-memory store alike; and a
state file from before the uniqueness index opens, with one rollout in progress kept."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from shipyard.errors import StoreUnavailable
from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.rollout.records import ServiceRecord
from shipyard.state.sqlite import SqliteStore
from support.memory_store import InMemoryStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "state.db") if request.param == "sqlite" else InMemoryStore()
    yield s
    s.close()


def fresh(service: str = "shop", phase: Phase = Phase.BUILDING, at: float = 1.0) -> Rollout:
    return Rollout("", service, Kind.DEPLOY, phase, "blue", None, None, None, created_at=at, updated_at=at)


def test_the_first_rollout_begins_numbered_with_its_service_record(store: SqliteStore | InMemoryStore) -> None:
    svc = ServiceRecord("shop", "127.0.0.1:8080", "/x/shop.yaml")
    begun, r = store.begin_rollout(fresh(), {"service": "shop"}, svc)
    assert begun and r.id == "shop-1" and r.phase is Phase.BUILDING
    assert store.get_rollout("shop-1") == r and store.rollout_spec("shop-1") == {"service": "shop"}
    got = store.get_service("shop")
    assert got is not None and got.listen == "127.0.0.1:8080"


def test_a_second_rollout_is_refused_while_one_is_in_progress_and_nothing_is_written(
        store: SqliteStore | InMemoryStore) -> None:
    _, first = store.begin_rollout(fresh(), {"n": 1})
    other = ServiceRecord("shop", "127.0.0.1:9999", "/elsewhere.yaml")
    begun, got = store.begin_rollout(fresh(at=2.0), {"n": 2}, other)
    assert not begun and got == first                       # the one in progress, to name in the refusal
    assert [r.id for r in store.rollouts("shop")] == ["shop-1"]
    assert store.get_service("shop") is None                # the loser's record was not written
    assert store.begin_rollout(fresh("cart"), None)[0]      # another service is not held up


def test_once_the_rollout_ended_the_next_begins_with_the_next_number(store: SqliteStore | InMemoryStore) -> None:
    for n in range(1, 4):
        begun, r = store.begin_rollout(fresh(at=float(n)), None)
        assert begun and r.id == f"shop-{n}"
        store.put_rollout(r.enter(Phase.SUCCEEDED if n % 2 else Phase.FAILED, float(n)))
    assert [r.id for r in store.rollouts("shop")] == ["shop-3", "shop-2", "shop-1"]
    assert store.active_rollouts("shop") == []


def test_the_schema_itself_refuses_a_second_rollout_in_progress(store: SqliteStore | InMemoryStore) -> None:
    _, first = store.begin_rollout(fresh(), None)
    with pytest.raises(sqlite3.IntegrityError):
        store.put_rollout(Rollout("shop-9", "shop", Kind.DEPLOY, Phase.STARTING, "green", "blue", "i", None))
    store.put_rollout(Rollout("shop-8", "shop", Kind.DEPLOY, Phase.FAILED, "green", "blue", "i", None))  # ended: fine
    store.put_rollout(first.enter(Phase.STARTING, 2.0))     # the one in progress moves on
    assert [r.id for r in store.active_rollouts("shop")] == ["shop-1"]


def test_two_stores_on_one_file_begin_from_two_threads_exactly_one(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: two connections (two daemons on one file) never both pass the check.
    A connection that waits longer than the busy timeout (10 ms: a preempted winner on a loaded
    machine) is refused as `locked` (the API's 503, try again), never let through."""
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    for round_ in range(20):
        barrier = threading.Barrier(4)
        results: list[tuple[bool, Rollout]] = []
        locked: list[StoreUnavailable] = []

        def begin(barrier: threading.Barrier, results: list[tuple[bool, Rollout]],
                  locked: list[StoreUnavailable], at: float) -> None:
            s = SqliteStore(path)      # a connection of its own, in its own thread
            try:
                barrier.wait()
                results.append(s.begin_rollout(fresh(at=at), None))
            except StoreUnavailable as e:
                if e.cause != "locked":
                    raise
                locked.append(e)
            finally:
                s.close()
        threads = [threading.Thread(target=begin, args=(barrier, results, locked, float(round_)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) + len(locked) == 4, "a thread failed (its exception is in the warnings)"
        winners = [r for begun, r in results if begun]
        assert len(winners) == 1 and all(r == winners[0] for _b, r in results), results
        assert winners[0].id == f"shop-{round_ + 1}"
        s = SqliteStore(path)
        s.put_rollout(winners[0].enter(Phase.SUCCEEDED, float(round_)))
        s.close()


def test_a_state_file_with_two_rollouts_in_progress_opens_keeping_the_newest(tmp_path: Path) -> None:
    """A file written before the index (when two deploys could both begin) still opens: the
    older rollout in progress is ended as failed, with why, and the index is then in place."""
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX rollouts_one_in_progress")        # the schema as it was
    for seq in (1, 2, 3):
        r = Rollout(f"shop-{seq}", "shop", Kind.DEPLOY, Phase.SUCCEEDED if seq == 1 else Phase.STARTING,
                    "green", "blue", "i", None, created_at=float(seq))
        db.execute("INSERT INTO rollouts(id, seq, service, phase, data, spec, created_at, updated_at)"
                   " VALUES (?,?,?,?,?,NULL,?,?)", (r.id, seq, "shop", str(r.phase), json.dumps(r.to_dict()),
                                                   r.created_at, r.created_at))
    db.commit()
    db.close()

    s = SqliteStore(path)
    try:
        assert [r.id for r in s.active_rollouts("shop")] == ["shop-3"]
        older = s.get_rollout("shop-2")
        assert older is not None and older.phase is Phase.FAILED and "at the same time" in older.reason
        got = s.get_rollout("shop-1")
        assert got is not None and got.phase is Phase.SUCCEEDED
        assert not s.begin_rollout(fresh(), None)[0]
        names = [r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type='index'")]
        assert "rollouts_one_in_progress" in names
    finally:
        s.close()
