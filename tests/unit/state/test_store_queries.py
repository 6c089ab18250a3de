"""The stores' read methods that the checklist and /metrics rely on, on a real SQLite file (and
on the tests' in-memory fake of it, which must answer the same) and a real image store in a temp
directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.images import BuildInput, ImageStore
from shipyard.rollout.model import Kind, Phase, Rollout
from shipyard.state.sqlite import SqliteStore
from support.memory_store import InMemoryStore


@pytest.fixture
def sqlite_store(tmp: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp / "state.db")
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp: Path) -> Iterator[SqliteStore | InMemoryStore]:
    s = SqliteStore(tmp / "state.db") if request.param == "sqlite" else InMemoryStore()
    yield s
    s.close()


def rollout(rid: str, phase: Phase, kind: Kind = Kind.DEPLOY, strategy: str = "blue_green") -> Rollout:
    service = rid.rsplit("-", 1)[0]
    return Rollout(rid, service, kind, phase, "green", "blue", "img2", "img1", strategy=strategy)


# -- last_event ---------------------------------------------------------------------------------

def test_last_event_is_the_newest_of_its_kind_for_the_service(store: SqliteStore | InMemoryStore) -> None:
    store.add_event("shop", "traffic.switched", "first", "shop-1", {"seconds": 0.1})
    wanted = store.add_event("shop", "traffic.switched", "second", "shop-2", {"seconds": 0.2})
    store.add_event("shop", "rollout.phase", "a newer event of another kind", "shop-2")
    store.add_event("cart", "traffic.switched", "a newer event of another service", "cart-1")

    got = store.last_event("shop", "traffic.switched")
    assert got == wanted
    assert got == next(e for e in store.events("shop") if e.id == wanted.id)
    assert got is not None and got.data == {"seconds": 0.2} and got.rollout_id == "shop-2"
    assert store.last_event("shop", "database.checked") is None
    assert store.last_event("nobody", "traffic.switched") is None


def test_last_event_of_one_rollout_ignores_newer_ones_of_other_rollouts(store: SqliteStore | InMemoryStore) -> None:
    store.add_event("shop", "database.plan", "older plan", "shop-1", {"plan": {"expand": ["0001"]}})
    wanted = store.add_event("shop", "database.plan", "newer plan", "shop-1", {"plan": {"expand": ["0002"]}})
    store.add_event("shop", "database.plan", "another rollout's plan", "shop-2", {"plan": {"expand": ["0003"]}})
    store.add_event("shop", "database.checked", "another kind", "shop-1")

    assert store.last_event("shop", "database.plan", "shop-1") == wanted
    newest = store.last_event("shop", "database.plan")
    assert newest is not None and newest.message == "another rollout's plan"
    assert store.last_event("shop", "database.plan", "shop-3") is None
    assert store.last_event("cart", "database.plan", "shop-1") is None


# -- finished rollouts --------------------------------------------------------------------------

def test_finished_rollout_counts_groups_ended_rollouts_in_order(store: SqliteStore | InMemoryStore) -> None:
    for r in (rollout("shop-1", Phase.SUCCEEDED), rollout("shop-2", Phase.SUCCEEDED),
              rollout("shop-3", Phase.FAILED, strategy="canary"), rollout("shop-4", Phase.ABORTED, strategy="canary"),
              rollout("shop-5", Phase.SUCCEEDED, Kind.ROLLBACK), rollout("shop-6", Phase.PROGRESSING, strategy="canary"),
              rollout("cart-1", Phase.FAILED), rollout("cart-2", Phase.STARTING)):
        store.put_rollout(r)
    assert store.finished_rollout_counts() == [
        ("cart", "deploy", "blue_green", "failed", 1),
        ("shop", "deploy", "blue_green", "succeeded", 2),
        ("shop", "deploy", "canary", "aborted", 1),
        ("shop", "deploy", "canary", "failed", 1),
        ("shop", "rollback", "blue_green", "succeeded", 1),
    ]


def test_finished_rollout_counts_gives_empty_labels_for_fields_a_row_lacks(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.put_rollout(rollout("shop-1", Phase.FAILED))
    doc = rollout("shop-1", Phase.FAILED).to_dict()
    del doc["strategy"]
    store.db.execute("UPDATE rollouts SET data=? WHERE id='shop-1'", (json.dumps(doc),))
    assert store.finished_rollout_counts() == [("shop", "deploy", "", "failed", 1)]


def test_finished_analysis_ids_are_ended_rollouts_with_an_analysis(store: SqliteStore | InMemoryStore) -> None:
    for r in (rollout("shop-1", Phase.SUCCEEDED), rollout("shop-2", Phase.FAILED), rollout("shop-3", Phase.ABORTED),
              rollout("shop-4", Phase.ANALYZING), rollout("shop-5", Phase.SUCCEEDED)):
        store.put_rollout(r)
    for rid in ("shop-3", "shop-1", "shop-2", "shop-4", "gone-1"):
        store.put_analysis(rid, {"verdicts": []})
    assert store.finished_analysis_ids() == ["shop-1", "shop-2", "shop-3"]
    store.put_rollout(rollout("shop-4", Phase.SUCCEEDED))
    assert store.finished_analysis_ids() == ["shop-1", "shop-2", "shop-3", "shop-4"]


# -- image objects ------------------------------------------------------------------------------

async def built(tmp: Path) -> tuple[ImageStore, dict[str, Any]]:
    src = tmp / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "main.py").write_text("print('v1')\n")
    (src / "app" / "data.bin").write_bytes(bytes(range(256)) * 10)
    os.symlink("app/main.py", src / "entry.py")
    images = ImageStore(tmp / "images")
    image = await images.build(BuildInput(service="shop", context=src, ignore=[], steps=[], env={}, files={},
                                          run_command=["python", "-m", "app"], run_env={}))
    return images, image.manifest


def object_of(images: ImageStore, manifest: dict[str, Any], path: str) -> Path:
    entry = next(e for e in manifest["files"] if e["path"] == path)
    sha = entry["sha256"]
    return images.root / "objects" / sha[:2] / sha[2:]


async def test_object_problem_is_none_while_every_object_is_intact(tmp: Path) -> None:
    images, manifest = await built(tmp)
    assert {e["type"] for e in manifest["files"]} == {"dir", "file", "symlink"}
    assert images.object_problem(manifest) is None


async def test_object_problem_names_a_missing_object(tmp: Path) -> None:
    images, manifest = await built(tmp)
    object_of(images, manifest, "app/main.py").unlink()
    assert images.object_problem(manifest) == "the object for app/main.py is missing from the store"


async def test_object_problem_names_a_corrupted_object(tmp: Path) -> None:
    images, manifest = await built(tmp)
    obj = object_of(images, manifest, "app/data.bin")
    os.chmod(obj, 0o644)
    obj.write_bytes(b"not the content the manifest names")
    assert images.object_problem(manifest) == "the object for app/data.bin is corrupted"
