"""The MIGRATING phase in both strategy machines: expand migrations run after the build
and before any instance of the new release starts; a failure there changes nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shipyard.rollout import bluegreen, canary, machines
from shipyard.rollout.model import (
    AbortRequested,
    Built,
    Kind,
    Migrated,
    MigrateDatabase,
    MigrationFailed,
    Phase,
    Rollout,
    SlotHealthy,
    StartSlot,
)
from shipyard.spec import parse_spec

CANARY = """
service: shop
listen: 127.0.0.1:9000
run: {command: [x]}
database: {url: postgresql://127.0.0.1/shop, migrations: m}
strategy:
  canary:
    steps: [{set_weight: 10}, {pause: {}}]
"""
BLUE_GREEN = CANARY.split("strategy:")[0]


def new(strategy: str, migrate: bool = True) -> Rollout:
    return Rollout(id="shop-2", service="shop", kind=Kind.DEPLOY, phase=Phase.BUILDING, target_slot="green",
                   previous_slot="blue", image_id=None, previous_image_id="old", strategy=strategy, migrate=migrate)


@pytest.mark.parametrize("strategy,text", [("blue_green", BLUE_GREEN), ("canary", CANARY)])
def test_migrations_come_between_build_and_start(strategy: str, text: str) -> None:
    spec = parse_spec(text, "s.yaml", ".")
    r, acts = machines.step(new(strategy), spec, Built("img", "old"), 1.0)
    assert (r.phase, acts) == (Phase.MIGRATING, [MigrateDatabase("img")])
    assert machines.entry_actions(r, spec) == [MigrateDatabase("img")]      # resumed after a crash: done again
    r, acts = machines.step(r, spec, SlotHealthy("green"), 2.0)              # not its phase: ignored
    assert r.phase is Phase.MIGRATING
    r, acts = machines.step(r, spec, Migrated("applied 0003"), 3.0)
    assert r.phase is Phase.STARTING and isinstance(acts[0], StartSlot) and acts[0].image_id == "img"
    assert r.timings["migrating"] == pytest.approx(2.0)


@pytest.mark.parametrize("strategy,text", [("blue_green", BLUE_GREEN), ("canary", CANARY)])
def test_failed_migration_ends_without_touching_slots(strategy: str, text: str) -> None:
    spec = parse_spec(text, "s.yaml", ".")
    r, _ = machines.step(new(strategy), spec, Built("img", "old"), 1.0)
    r, acts = machines.step(r, spec, MigrationFailed("unsafe: add-column-volatile-default"), 2.0)
    assert (r.phase, r.reason, acts) == (Phase.FAILED, "unsafe: add-column-volatile-default", [])


@pytest.mark.parametrize("strategy,text", [("blue_green", BLUE_GREEN), ("canary", CANARY)])
def test_abort_while_migrating_tears_nothing_down(strategy: str, text: str) -> None:
    spec = parse_spec(text, "s.yaml", ".")
    r, _ = machines.step(new(strategy), spec, Built("img", "old"), 1.0)
    r, acts = machines.step(r, spec, AbortRequested("stop"), 2.0)
    assert r.phase is Phase.ABORTED and acts == []


def test_without_a_database_the_build_goes_straight_to_start() -> None:
    r, acts = bluegreen.step(new("blue_green", migrate=False), Built("img", "old"), 1.0)
    assert r.phase is Phase.STARTING and acts == [StartSlot("green", "img")]
    spec = parse_spec(CANARY, "s.yaml", ".")
    r, _ = canary.step(new("canary", migrate=False), spec, Built("img", "old"), 1.0)
    assert r.phase is Phase.STARTING


def test_same_image_is_still_a_noop_with_a_database() -> None:
    r, acts = bluegreen.step(new("blue_green"), Built("old", "old"), 1.0)
    assert r.phase is Phase.SUCCEEDED and acts == []


def test_rollout_round_trips_its_database_fields() -> None:
    r = replace(new("blue_green"), allow_unsafe="table is empty")
    assert Rollout.from_dict(r.to_dict()) == r
