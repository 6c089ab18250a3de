"""The checklist's decisions and thresholds, from plain inputs."""

from __future__ import annotations

from pathlib import Path

from shipyard.checklist import (
    FAIL,
    PASS,
    WARN,
    BlastInputs,
    Check,
    DatabaseInputs,
    DriftInputs,
    LastDbCheck,
    PreviousImage,
    Timing,
    UndoInputs,
    WarmSlot,
    blast_radius_check,
    database_check,
    drift_check,
    exit_code,
    report,
    undo_check,
)
from shipyard.rollout.exposure import exposure
from shipyard.spec import parse_spec

NOW = 1_000_000.0
IMG = "a" * 64
OLD = "b" * 64


def prev(tree: str = "intact", objects_ok: bool = True) -> PreviousImage:
    return PreviousImage(OLD, tree, "summary", f"/s/images/trees/{OLD}", objects_ok,
                         "" if objects_ok else "the object for app.py is missing from the store", 0.05)


def undo(**kw: object) -> Check:
    base: dict[str, object] = {"now": NOW, "live_image": IMG}
    return undo_check(UndoInputs(**(base | kw)))  # type: ignore[arg-type]


def test_undo_warm_slot_is_a_switch_with_its_measured_duration() -> None:
    c = undo(warm=WarmSlot("blue", OLD, 2, NOW + 300), last_switch=Timing(0.0028, "shop-2", NOW - 5))
    assert c.status == PASS and "2.8 ms" in c.summary and "300s" in c.summary
    assert c.evidence["path"] == "switch" and c.evidence["warm_slot"]["seconds_left"] == 300


def test_undo_warm_slot_without_healthy_instances_falls_back_to_the_previous_image() -> None:
    c = undo(warm=WarmSlot("blue", OLD, 0, NOW + 300), previous=prev(),
             cold_phases={"starting": 3.0, "previewing": 0.5, "switching": 0.003}, cold_source="shop-2")
    assert c.status == PASS and c.evidence["path"] == "cold redeploy" and "no healthy instance" in c.summary
    assert abs(c.evidence["estimate_seconds"] - 3.553) < 1e-6


def test_undo_cold_estimate_over_a_minute_warns() -> None:
    c = undo(previous=prev(), cold_phases={"starting": 70.0}, cold_source="shop-2")
    assert c.status == WARN and "not within a minute" in c.summary and "scale_down_delay" in c.action


def test_undo_fails_without_previous_release_or_with_a_bad_tree() -> None:
    assert undo().status == FAIL
    tampered = undo(previous=prev("tampered"), cold_phases={"starting": 1.0})
    assert tampered.status == FAIL and "remove the tree" in tampered.action
    broken = undo(previous=prev("tampered", objects_ok=False), cold_phases={"starting": 1.0})
    assert broken.status == FAIL and "rebuild" in broken.action
    gone = undo(previous=prev("missing", objects_ok=False), cold_phases={"starting": 1.0})
    assert gone.status == FAIL and "cannot be restored" in gone.summary


def test_undo_missing_tree_with_intact_objects_is_restorable() -> None:
    c = undo(previous=prev("missing"), cold_phases={"starting": 2.0}, cold_source="shop-1")
    assert c.status == PASS and "restorable" in c.summary


def test_undo_without_timings_warns_and_without_live_release_warns() -> None:
    assert undo(previous=prev()).status == WARN
    assert undo(live_image=None).status == WARN


def spec(strategy: str):
    return parse_spec("service: shop\nlisten: 127.0.0.1:8080\nrun: {command: [x]}\nstrategy:\n" + strategy,
                      "shop.yaml", Path("/tmp"))


def test_blast_radius_thresholds() -> None:
    small = exposure(spec("  canary:\n    steps: [{set_weight: 5}, {pause: 60s}, {set_weight: 50}]\n"), 200)
    assert blast_radius_check(BlastInputs(small.to_dict())).status == PASS
    big = exposure(spec("  canary:\n    steps: [{set_weight: 30}, {pause: 60s}]\n"), 200)
    c = blast_radius_check(BlastInputs(big.to_dict()))
    assert c.status == WARN and "more than 25%" in c.summary
    never = exposure(spec("  canary:\n    steps: [{set_weight: 10}, {pause: 1s}]\n"
                          "    analysis: {min_requests: 500}\n"), 10)
    assert blast_radius_check(BlastInputs(never.to_dict())).status == FAIL


def test_blast_radius_of_blue_green_depends_on_preview_checks() -> None:
    bg = exposure(spec("  blue_green: {}\n"), 200).to_dict()
    assert blast_radius_check(BlastInputs(bg, preview_checks=0)).status == FAIL
    c = blast_radius_check(BlastInputs(bg, preview_checks=2))
    assert c.status == WARN and c.evidence["max_share_before_verdict"] == 100


def scan(clean: bool = True, age: float = 5, full_age: float | None = 30, findings: int = 0) -> dict:
    return {"clean": clean, "scanned_at": NOW - age, "mode": "metadata",
            "last_full_at": None if full_age is None else NOW - full_age,
            "findings": [{"kind": "content", "instance_id": "i1", "detail": f"edited file {i}"}
                         for i in range(findings)]}


def drift(report: dict | None, mode: str = "landlock") -> Check:
    return drift_check(DriftInputs(NOW, report, {"mode": mode, "reason": "x"}, 60.0, 3600.0))


def test_drift_pass_warn_fail() -> None:
    assert drift(scan()).status == PASS
    assert drift(scan(), "verify-only").status == WARN
    assert drift(None).status == WARN
    old = drift(scan(full_age=3600 * 1.5 + 11))
    assert old.status == WARN and "full re-hash" in old.summary
    assert drift(scan(full_age=None)).status == WARN
    assert drift(scan(age=60 * 1.5 + 11)).status == WARN
    found = drift(scan(clean=False, findings=3))
    assert found.status == FAIL and "3 finding(s)" in found.summary and len(found.evidence["findings"]) == 3


def plan(pending: list[tuple[str, str]] = (), changed: list[str] = ()) -> dict:   # type: ignore[assignment]
    expand = []
    for v, phase in pending:
        if phase == "contract":
            break
        expand.append(v)
    return {"pg_version": 160000, "applied": [{}, {}], "changed": list(changed),
            "pending": [{"version": v, "phase": ph} for v, ph in pending],
            "expand": expand, "held": [v for v, _ in pending][len(expand):]}


def test_database_pass_warn_fail() -> None:
    assert database_check(DatabaseInputs(False)).status == PASS
    assert database_check(DatabaseInputs(True, plan())).status == PASS
    held = database_check(DatabaseInputs(True, plan([("0005", "contract")])))
    assert held.status == WARN and "0005" in held.summary and "db contract" in held.action
    blocking = [{"rule": "create-index-not-concurrently", "source": "m/0003.sql", "line": 1,
                 "message": "locks writes", "fix": "CREATE INDEX CONCURRENTLY"}]
    unsafe = database_check(DatabaseInputs(True, plan([("0003", "expand")]), gate_blocking=blocking))
    assert unsafe.status == FAIL and "CONCURRENTLY" in unsafe.action
    assert database_check(DatabaseInputs(True, plan(changed=["0001"]))).status == FAIL
    assert database_check(DatabaseInputs(True, None, error="connection refused")).status == WARN


def test_database_pending_expand_needs_a_passing_rehearsal_covering_it() -> None:
    pending = plan([("0003", "expand")])
    assert database_check(DatabaseInputs(True, pending)).status == WARN
    ok = LastDbCheck("shop-3", NOW, True, [], ["0003"])
    assert database_check(DatabaseInputs(True, pending, last_check=ok)).status == PASS
    bad = LastDbCheck("shop-3", NOW, False, ["old release failed GET /"], ["0003"])
    failed = database_check(DatabaseInputs(True, pending, last_check=bad))
    assert failed.status == FAIL and "old release failed" in failed.summary


def test_exit_code_and_report() -> None:
    checks = [Check("undo", PASS, ""), Check("drift", WARN, "")]
    assert exit_code(checks) == 0 and report("shop", checks, NOW)["status"] == WARN
    checks.append(Check("database", FAIL, ""))
    assert exit_code(checks) == 1 and report("shop", checks, NOW)["status"] == FAIL
