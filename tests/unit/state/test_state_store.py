"""The state store: records survive a reopen exactly (SQLite, and the tests' in-memory fake of it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState
from shipyard.state.sqlite import SqliteStore
from support.memory_store import InMemoryStore

Opener = Callable[[], "SqliteStore | InMemoryStore"]


@pytest.fixture(params=["sqlite", "memory"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the store; a second call opens it again (a new SqliteStore on the same file,
    a new InMemoryStore on the same data)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "state.db")
    first = InMemoryStore()
    opened: list[InMemoryStore] = []

    def open_memory() -> InMemoryStore:
        opened.append(first if not opened else first.reopen())
        return opened[-1]
    return open_memory


def test_service_instance_rollout_event_round_trip(open_store: Opener) -> None:
    s = open_store()
    svc = ServiceRecord("shop", "127.0.0.1:8080", "/x/shop.yaml", active_slot="blue", table_version=3)
    svc.slots["blue"] = Slot(SlotState.LIVE, "img1", {"service": "shop"}, None)
    s.put_service(svc)
    i = Instance("shop-blue-1", "shop", "blue", "img1", "127.0.0.1", 4000, 99, 12345, "/l", "/d")
    s.put_instance(i, "healthy")
    r = Rollout("shop-1", "shop", Kind.DEPLOY, Phase.STARTING, "green", "blue", "img2", "img1")
    s.put_rollout(r, {"service": "shop"})
    e = s.add_event("shop", "x", "hello", "shop-1", {"a": 1})
    s.close()

    s = open_store()
    got = s.get_service("shop")
    assert got is not None and got.active_slot == "blue" and got.table_version == 3
    assert got.slots["blue"] == svc.slots["blue"] and got.slots["green"] == Slot()
    assert s.instances("shop") == [(i, "healthy")]
    s.set_instance_status(i.id, "stopped")
    assert s.instances("shop") == [] and s.instances("shop", live_only=False) == [(i, "stopped")]
    assert s.get_rollout("shop-1") == r and s.rollout_spec("shop-1") == {"service": "shop"}
    assert s.active_rollouts("shop") == [r]
    s.put_rollout(r.enter(Phase.FAILED, 1.0, "x"))
    assert s.active_rollouts("shop") == [] and s.rollout_spec("shop-1") == {"service": "shop"}
    assert s.next_rollout_seq("shop") == 2
    assert [ev.message for ev in s.events(rollout_id="shop-1")] == ["hello"]
    assert s.events(since=e.id) == []
    s.close()
