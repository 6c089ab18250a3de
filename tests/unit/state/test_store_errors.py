"""A store that cannot write says so as one StoreUnavailable naming the cause and the path,
changes nothing (record_step stays all or nothing, no transaction is left open), never
waits long for another process's lock, and reads go on meanwhile. The SQLite store is
locked for real, by a second connection holding BEGIN EXCLUSIVE; the in-memory store
through its `fail_writes` (a full disk is faked only in the integration test)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipyard.errors import StoreUnavailable
from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.rollout.records import ServiceRecord
from shipyard.state.faults import FaultLog, translate
from shipyard.state.sqlite import SqliteStore
from support.memory_store import InMemoryStore

Store = SqliteStore | InMemoryStore


def _rollout(phase: Phase = Phase.STARTING) -> Rollout:
    return Rollout("shop-1", "shop", Kind.DEPLOY, phase, "green", "blue", "img2", "img1")


@pytest.fixture(params=["sqlite", "memory"])
def locked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Callable[[bool], None]]]:
    """A store with a rollout and a service in it, and a switch that locks it (True) or frees it."""
    path = tmp_path / "state.db"
    store: Store = SqliteStore(path) if request.param == "sqlite" else InMemoryStore()
    store.put_service(ServiceRecord("shop", "127.0.0.1:8080", "/x/shop.yaml"))
    store.put_rollout(_rollout(), {"service": "shop"})
    other = sqlite3.connect(str(path), isolation_level=None) if request.param == "sqlite" else None

    def lock(on: bool) -> None:
        if isinstance(store, InMemoryStore):
            store.fail_writes = StoreUnavailable(f"the state database {path} is locked by another process",
                                                 cause="locked") if on else None
        else:
            assert other is not None
            other.execute("BEGIN EXCLUSIVE" if on else "ROLLBACK")
    yield store, lock
    if other is not None:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    if isinstance(store, SqliteStore):
        store.close()


def test_a_foreign_lock_fails_a_write_at_once_naming_the_lock_and_reads_go_on(
        locked: tuple[Store, Callable[[bool], None]]) -> None:
    store, lock = locked
    lock(True)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as e:
        store.record_step(_rollout(Phase.PREVIEWING), "rollout.phase", "shop-1 -> previewing")
    assert time.monotonic() - t0 < 0.5          # a few ms of busy timeout, not sqlite's seconds
    assert "is locked by another process" in e.value.message and "state.db" in e.value.message
    # all or nothing: neither the phase nor its event; and reads answer meanwhile
    r = store.get_rollout("shop-1")
    assert r is not None and r.phase is Phase.STARTING
    assert store.events(rollout_id="shop-1") == []
    assert store.get_service("shop") is not None
    with pytest.raises(StoreUnavailable):
        store.add_event("shop", "x", "y")
    if isinstance(store, SqliteStore):
        assert not store.db.in_transaction
        assert "fuser" in (e.value.hint or "")
    lock(False)
    store.record_step(_rollout(Phase.PREVIEWING), "rollout.phase", "shop-1 -> previewing")
    r = store.get_rollout("shop-1")
    assert r is not None and r.phase is Phase.PREVIEWING
    assert [ev.kind for ev in store.events(rollout_id="shop-1")] == ["rollout.phase"]


def test_a_failed_commit_leaves_no_transaction_and_no_half_step(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """COMMIT is where a full disk shows in WAL mode: the whole step is rolled back."""
    store = SqliteStore(tmp_path / "state.db")
    store.put_rollout(_rollout(), {"service": "shop"})
    real = type(store.db).execute

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13        # type: ignore[attr-defined]

    def full_commit(self, sql, parameters=(), /):  # type: ignore[no-untyped-def]
        if sql == "COMMIT":
            raise self._failed(full)
        return real(self, sql, parameters)
    monkeypatch.setattr(type(store.db), "execute", full_commit)
    with pytest.raises(StoreUnavailable) as e:
        store.record_step(_rollout(Phase.PREVIEWING), "rollout.phase", "shop-1 -> previewing")
    monkeypatch.setattr(type(store.db), "execute", real)
    assert e.value.message == f"no space left on device writing {tmp_path / 'state.db'}"
    assert not store.db.in_transaction
    r = store.get_rollout("shop-1")
    assert r is not None and r.phase is Phase.STARTING and store.events() == []
    store.close()


@pytest.mark.parametrize(("code", "words"), [
    (13, "no space left on device writing"), (5, "is locked by another process"), (8, "is read-only"),
    (10, "I/O error on the state database")])
def test_each_cause_has_its_own_words(tmp_path: Path, code: int, words: str) -> None:
    e = sqlite3.OperationalError("whatever sqlite says")
    e.sqlite_errorcode = code        # type: ignore[attr-defined]
    err = translate(e, tmp_path / "state.db")
    assert err is not None and words in err.message and str(tmp_path / "state.db") in err.message
    assert err.hint


def test_a_constraint_is_not_an_outage(tmp_path: Path) -> None:
    e = sqlite3.IntegrityError("UNIQUE constraint failed")
    e.sqlite_errorcode = 2067        # type: ignore[attr-defined]   SQLITE_CONSTRAINT_UNIQUE
    assert translate(e, tmp_path / "state.db") is None


def test_the_log_says_a_cause_once_then_counts_then_recovery(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    faults = FaultLog(clock=lambda: now[0], every=60)
    err = StoreUnavailable("no space left on device writing /s/state.db", "free space in /s")
    with caplog.at_level(logging.INFO, logger="shipyard.store"):
        for _ in range(200):         # 200 refusals over 100 s
            faults.failed(err)
            now[0] += 0.5
        faults.wrote()               # one write that fits: not yet a recovery
        now[0] += 3
        faults.failed(err)           # ... as the next refusal shows: the same outage, no new line
        faults.wrote()
        now[0] += 5
        faults.wrote()               # writes for 5 s (more than QUIET_FOR) with no refusal: over
        faults.wrote()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("no space left on device writing /s/state.db; free space in /s")
    assert "still failing: 120 store calls refused in the last 60 s" in lines[1]
    assert lines[2].startswith("state database writable again after 103.0 s (201 store calls refused)")
    assert not any(r.exc_info for r in caplog.records)


def test_refused_calls_are_counted_per_cause_for_metrics_and_survive_the_outage(
        locked: tuple[Store, Callable[[bool], None]]) -> None:
    store, lock = locked
    assert store.refusals() == {}
    lock(True)
    for _ in range(3):
        with pytest.raises(StoreUnavailable) as err:
            store.put_service(ServiceRecord("cart", "127.0.0.1:8081", "/x/cart.yaml"))
        assert err.value.cause == "locked"
    lock(False)
    store.put_service(ServiceRecord("cart", "127.0.0.1:8081", "/x/cart.yaml"))
    assert store.refusals() == {"locked": 3}       # a counter: not reset when writes work again


def test_every_cause_translate_names_is_a_metrics_label(tmp_path: Path) -> None:
    seen = set()
    for code in (5, 6, 8, 10, 11, 13, 14, 26):
        e = sqlite3.OperationalError("x")
        e.sqlite_errorcode = code        # type: ignore[attr-defined]
        err = translate(e, tmp_path / "state.db")
        assert err is not None and err.cause in StoreUnavailable.CAUSES, (code, err)
        seen.add(err.cause)
    assert seen == set(StoreUnavailable.CAUSES) - {"unavailable"}, seen
