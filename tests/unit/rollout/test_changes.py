"""Desired vs live: every difference between a spec (and the image it builds) and the live
release is reported with its concrete reason, and nothing else is."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shipyard.images.manifest import make_manifest
from shipyard.rollout.changes import (
    MAX_FILE_CHANGES,
    migration_outlook,
    plan_service,
    spec_changes,
)
from shipyard.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "shop" / "v1.yaml"
SHA_A, SHA_B = "a" * 64, "b" * 64


def spec_doc(**changes: Any) -> dict[str, Any]:
    doc = load_spec(EXAMPLE).to_json_dict()
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return doc


def manifest(files: dict[str, tuple[str, str]] | None = None, env: dict[str, str] | None = None,
             command: list[str] | None = None, dirs: tuple[str, ...] = ("shop",)) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [{"path": d, "type": "dir"} for d in dirs]
    for path, (sha, mode) in (files if files is not None else {"shop/app.py": (SHA_A, "0644"),
                                                                 "release.toml": (SHA_A, "0644")}).items():
        entries.append({"path": path, "type": "file", "mode": mode, "size": 10, "sha256": sha})
    env = env if env is not None else {"LOG_LEVEL": "info"}
    return make_manifest("shop", command or ["python3", "-m", "shop"], env, entries)


def plan(new_doc: dict[str, Any], new_manifest: dict[str, Any], live_doc: dict[str, Any] | None = None,
         live_manifest: dict[str, Any] | None = None, same_image: bool = False, **kw: Any):
    live_doc = spec_doc() if live_doc is None else live_doc
    return plan_service(new_doc, new_manifest, "1" * 64 if same_image else "2" * 64, live_doc=live_doc,
                        live_image="1" * 64, live_manifest=live_manifest or manifest(), **kw)


def summaries(p: Any) -> list[str]:
    return [c.summary for c in p.changes]


def test_identical_spec_and_image_is_no_change() -> None:
    p = plan(spec_doc(), manifest(), same_image=True)
    assert p.changes == [] and p.exit_code == 0 and not p.image_changed
    assert p.to_dict()["exit_code"] == 0 and p.to_dict()["blocked"] == []


def test_where_a_stored_spec_lives_is_not_a_change() -> None:
    stored = load_spec(EXAMPLE).to_stored_dict()            # what a slot keeps: with its base dir
    assert plan(spec_doc(), manifest(), live_doc=stored, same_image=True).changes == []
    assert spec_changes(stored | {"_base_dir": "/elsewhere"}, spec_doc()) == []
    first = [plan_service(doc, manifest(), "2" * 64, live_doc=None, live_image=None, live_manifest=None).to_dict()
             for doc in (stored, spec_doc())]
    assert first[0] == first[1]


def test_changed_context_file_is_named_with_where_it_came_from() -> None:
    new = manifest({"shop/app.py": (SHA_B, "0644"), "release.toml": (SHA_A, "0644")})
    p = plan(spec_doc(), new)
    assert summaries(p) == ["file shop/app.py changed in the build context"]
    c = p.changes[0]
    assert (c.area, c.path, c.old["sha256"], c.new["sha256"]) == ("image", "shop/app.py", SHA_A, SHA_B)
    assert p.exit_code == 2 and p.image_changed


def test_rendered_config_file_is_reported_as_config() -> None:
    new_doc = spec_doc(**{"build.files": {"release.toml": 'version = "2"\n'}})
    p = plan(new_doc, manifest({"shop/app.py": (SHA_A, "0644"), "release.toml": (SHA_B, "0644")}))
    assert summaries(p) == ["build.files release.toml changed (config)"]


def test_added_removed_and_mode_changes_and_new_directories_collapse() -> None:
    new = manifest({"shop/app.py": (SHA_A, "0755"), "lib/util.py": (SHA_A, "0644"),
                    "lib/more.py": (SHA_B, "0644")}, dirs=("shop", "lib"))
    assert summaries(plan(spec_doc(), new)) == [
        "file lib/more.py added to the build context",
        "file lib/util.py added to the build context",
        "build.files release.toml removed (config)",
        "file shop/app.py changed in the build context (mode 0644 -> 0755)",
    ]
    gone = manifest({"shop/app.py": (SHA_A, "0644")}, dirs=("shop", "empty"))
    doc = spec_doc(**{"build.files": {}})
    assert summaries(plan(doc, gone, live_doc=doc)) == [
        "directory empty added to the build context", "file release.toml removed from the build context"]


def test_env_changes_are_attributed_to_run_or_build_env_and_shown() -> None:
    new_doc = spec_doc(**{"run.env": {"LOG_LEVEL": "debug", "REGION": "eu"}, "build.env": {"PIP_INDEX": "x"}})
    live = manifest(env={"LOG_LEVEL": "info", "OLD": "1"})
    new = manifest(env={"LOG_LEVEL": "debug", "REGION": "eu", "PIP_INDEX": "x"})
    assert summaries(plan(new_doc, new, live_manifest=live)) == [
        "run.env.LOG_LEVEL: info -> debug",
        "build.env.OLD removed (was 1)",
        "build.env.PIP_INDEX added (x)",
        "run.env.REGION added (eu)",
    ]


def test_command_and_build_settings() -> None:
    new_doc = spec_doc(**{"build.steps": [["make", "all"]], "run.command": ["python3", "-m", "shop", "-v"]})
    p = plan(new_doc, manifest(command=["python3", "-m", "shop", "-v"]))
    assert summaries(p) == ['run.command: python3 -m shop -> python3 -m shop -v',
                            'build.steps: [] -> [["make", "all"]]']


def test_same_image_hides_build_keys_that_changed_nothing() -> None:
    p = plan(spec_doc(**{"build.ignore": [".git"]}), manifest(), same_image=True)
    assert p.changes == [] and p.exit_code == 0


def test_replicas_strategy_health_router_run_settings() -> None:
    live = spec_doc()
    new = spec_doc(replicas=3, **{"health.interval": "1s", "run.stop_timeout": "20s",
                                  "router.kind": "haproxy", "strategy.blue_green.auto_promote": False})
    p = plan(new, manifest(), live_doc=live, same_image=True)
    assert sorted(summaries(p)) == sorted([
        "replicas 2 -> 3", "health.interval: 500ms -> 1s", "run.stop_timeout: 5s -> 20s",
        "router.kind: embedded -> haproxy", "strategy.blue_green.auto_promote: true -> false"])
    assert {c.area for c in p.changes} == {"replicas", "health", "run", "router", "strategy"}
    assert p.exit_code == 2


def test_switching_strategy_kind_is_one_change_and_canary_steps_are_compared() -> None:
    canary = {"blue_green": None, "canary": {"steps": [{"set_weight": 10}], "analysis": {"interval": "5s"}}}
    p = plan(spec_doc(strategy=canary), manifest(), same_image=True)
    assert summaries(p) == ["strategy blue_green -> canary"]
    more = copy.deepcopy(canary)
    more["canary"]["steps"] = [{"set_weight": 10}, {"set_weight": 50}]
    p = plan(spec_doc(strategy=more), manifest(), live_doc=spec_doc(strategy=canary), same_image=True)
    assert summaries(p) == [
        'strategy.canary.steps: [{"set_weight": 10}] -> [{"set_weight": 10}, {"set_weight": 50}]']


def test_listen_change_is_refused_and_blocks_apply() -> None:
    p = plan(spec_doc(listen="127.0.0.1:9999"), manifest(), same_image=True)
    assert len(p.changes) == 1 and p.changes[0].refused
    assert "listen 127.0.0.1:8080 -> 127.0.0.1:9999: refused" in p.changes[0].summary
    assert p.blocked == [p.changes[0].summary] and p.exit_code == 2


def test_new_service_is_all_new() -> None:
    p = plan_service(spec_doc(), manifest(), "2" * 64, live_doc=None, live_image=None, live_manifest=None)
    assert not p.exists and p.exit_code == 2
    assert summaries(p)[:2] == ["new service shop: nothing of it runs yet",
                                "new image 222222222222 (2 files)"]
    assert "replicas 2" in summaries(p) and "strategy blue_green" in summaries(p)


def test_live_image_missing_from_the_store_is_a_change_with_an_unknown() -> None:
    p = plan_service(spec_doc(), manifest(), "2" * 64, live_doc=spec_doc(), live_image="1" * 64,
                     live_manifest=None)
    assert p.exit_code == 2 and summaries(p) == ["new image (the live image's manifest is not available)"]
    assert p.unknown and "not in the image store" in p.unknown[0]


def test_pending_migrations_expand_held_and_unknown() -> None:
    pending = {"pending": [{"version": "0002", "name": "orders"}, {"version": "0003", "name": "drop"}],
               "expand": ["0002"], "held": ["0003"], "blocking": 0, "changed": [], "pg_version": 150000}
    m = migration_outlook(pending)
    assert (m["status"], m["expand"], m["held"]) == ("pending", ["0002_orders"], ["0003_drop"])
    p = plan(spec_doc(), manifest(), same_image=True, migrations=m)
    assert summaries(p) == ["1 migration(s) to apply before traffic (expand): 0002_orders; "
                            "held back until `shipyard db contract` (contract): 0003_drop"]
    assert p.exit_code == 2
    held_only = migration_outlook(pending | {"expand": [], "held": ["0002", "0003"]})
    assert plan(spec_doc(), manifest(), same_image=True, migrations=held_only).exit_code == 0
    assert migration_outlook({"pending": [], "expand": [], "held": []})["status"] == "up_to_date"
    unknown = migration_outlook(None, "cannot connect to postgresql://u:***@db/shop: refused")
    p = plan(spec_doc(), manifest(), same_image=True, migrations=unknown)
    assert p.changes == [] and p.exit_code == 1 and "cannot connect" in p.unknown[0]
    assert plan(spec_doc(replicas=3), manifest(), same_image=True, migrations=unknown).exit_code == 2


def test_a_held_back_rename_is_said_in_the_plan() -> None:
    m = migration_outlook({"pending": [{"version": "0003", "name": "rename"}], "expand": [], "held": ["0003"],
                           "blocking": 1, "changed": [], "held_renames": ["m/0003_rename.sql:1"]})
    [line] = summaries(plan(spec_doc(), manifest(), same_image=True, migrations=m))
    assert "held-back rename(s) at m/0003_rename.sql:1" in line and "stops before the new release" in line


def test_database_password_never_shown() -> None:
    db = {"url": "postgresql://shop:hunter2@db:5432/shop", "migrations": "m", "target": None, "alembic": None}
    live = spec_doc(database=db)
    new = spec_doc(database=db | {"url": "postgresql://shop:swordfish@db2:5432/shop"})
    p = plan(new, manifest(), live_doc=live, same_image=True)
    text = repr(p.to_dict())
    assert "hunter2" not in text and "swordfish" not in text
    assert summaries(p) == ["database.url: postgresql://shop:***@db:5432/shop -> postgresql://shop:***@db2:5432/shop"]
    added = plan(new, manifest(), same_image=True)
    assert "swordfish" not in repr(added.to_dict()) and added.changes[0].path == "database"


def test_many_file_changes_are_capped() -> None:
    files = {f"f{i:05d}.txt": (SHA_B, "0644") for i in range(MAX_FILE_CHANGES + 50)}
    p = plan(spec_doc(**{"build.files": {}}), manifest(files, dirs=()),
             live_doc=spec_doc(**{"build.files": {}}), live_manifest=manifest({}, dirs=()))
    assert len(p.changes) == MAX_FILE_CHANGES + 1 and p.changes[-1].summary == "... and 50 more files"
