"""The seed's operational checklist as a report: the Undo, Blast-radius, Drift and Database
tests, each answered PASS / WARN / FAIL with the evidence behind the answer and what to do.

Pure functions over plain inputs (gathered by `engine/queries.py` in the daemon),
so every threshold below is unit-tested without a daemon. The thresholds are fixed on
purpose: a checklist whose bar each team can lower answers a different question per team."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
STATUSES = (PASS, WARN, FAIL)

UNDO_LIMIT_SECONDS = 60.0
"""The seed's Undo test: back on the previous release within a minute."""
BLAST_PASS_MAX_SHARE = 25.0
"""Percent of users a bad release may reach before its first possible verdict and still pass."""
REFERENCE_RATE = 200.0
"""Requests per second assumed when the Blast-radius test turns steps into time (as `shipyard plan`)."""
SCAN_GRACE = 1.5
"""A scan counts as recent while younger than this many times its interval (the watcher ticks late)."""
SCAN_SLACK_SECONDS = 10.0
ENFORCING = ("landlock", "bubblewrap")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str = ""
    """What to do about a WARN or FAIL (empty on PASS)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "evidence": self.evidence,
                "action": self.action}


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=STATUSES.index, default=PASS)


def exit_code(checks: list[Check]) -> int:
    """1 on any FAIL; a WARN is worth reading but does not stop a pipeline."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def report(service: str, checks: list[Check], at: float) -> dict[str, Any]:
    return {"service": service, "at": at, "status": worst(checks), "checks": [c.to_dict() for c in checks]}


# -- Undo ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WarmSlot:
    slot: str
    image_id: str
    healthy_instances: int
    retire_at: float | None


@dataclass(frozen=True)
class PreviousImage:
    image_id: str
    tree: str                      # "intact" | "missing" | "tampered"
    tree_summary: str
    tree_path: str
    objects_ok: bool               # every object of its manifest present and matching: the tree can be rewritten
    objects_problem: str = ""
    verify_seconds: float = 0.0    # what checking it took here (a cold redeploy checks it again)


@dataclass(frozen=True)
class Timing:
    """A measured duration and where it comes from (a rollout id, an event)."""

    seconds: float
    source: str
    at: float


@dataclass(frozen=True)
class UndoInputs:
    now: float
    live_image: str | None
    rollout_in_progress: str | None = None
    warm: WarmSlot | None = None
    last_switch: Timing | None = None
    last_rollback: Timing | None = None
    previous: PreviousImage | None = None
    cold_phases: dict[str, float] | None = None    # starting / previewing / switching of the last good rollout
    cold_source: str = ""


COLD_PHASES = ("starting", "previewing", "switching")
"""What a rollback to a retained image goes through (it is never built, migrated or analysed)."""


def undo_check(u: UndoInputs) -> Check:
    name = "undo"
    ev: dict[str, Any] = {"limit_seconds": UNDO_LIMIT_SECONDS, "live_image": u.live_image}
    if u.last_switch is not None:
        ev["last_switch"] = {"seconds": u.last_switch.seconds, "source": u.last_switch.source,
                             "at": u.last_switch.at}
    if u.last_rollback is not None:
        ev["last_rollback"] = {"seconds": u.last_rollback.seconds, "rollout": u.last_rollback.source,
                               "at": u.last_rollback.at}
    if u.rollout_in_progress:
        ev["rollout_in_progress"] = u.rollout_in_progress
    if u.live_image is None:
        return Check(name, WARN, "nothing is live: there is no release to revert", ev,
                     "deploy the service first")
    if u.warm is not None:
        ev["warm_slot"] = {"slot": u.warm.slot, "image": u.warm.image_id, "healthy_instances":
                           u.warm.healthy_instances, "retire_at": u.warm.retire_at,
                           "seconds_left": None if u.warm.retire_at is None else max(0.0, u.warm.retire_at - u.now)}
    if u.warm is not None and u.warm.healthy_instances > 0:
        switch = (f"last measured switch {u.last_switch.seconds * 1000:.1f} ms" if u.last_switch
                  else "no switch measured yet")
        left = ("" if u.warm.retire_at is None
                else f"; the window closes in {max(0.0, u.warm.retire_at - u.now):.0f}s")
        ev["path"] = "switch"
        if u.last_switch is not None and u.last_switch.seconds >= UNDO_LIMIT_SECONDS:
            return Check(name, WARN, f"a switch back to warm slot {u.warm.slot} is possible but the last one took "
                         f"{u.last_switch.seconds:.1f}s", ev, "look at the router: a table swap takes milliseconds")
        return Check(name, PASS, f"yes: `shipyard rollback` switches back to warm slot {u.warm.slot} "
                     f"(image {u.warm.image_id[:12]}, {u.warm.healthy_instances} healthy instance(s)); {switch}"
                     f"{left}", ev)
    cold_note = (f"warm slot {u.warm.slot} has no healthy instance; " if u.warm is not None else "")
    p = u.previous
    if p is None:
        return Check(name, FAIL, f"no: {cold_note}there is no previous release to go back to", ev,
                     "keep the old slot warm after a switch (strategy.blue_green.scale_down_delay), and deploy "
                     "the next release while this one stays retained")
    ev["previous_image"] = {"image": p.image_id, "tree": p.tree, "tree_path": p.tree_path,
                            "objects_ok": p.objects_ok, "verify_seconds": round(p.verify_seconds, 3)}
    if p.tree == "tampered":
        fix = (f"remove the tree {p.tree_path}: the next start rewrites it from the object store (its objects "
               "are intact)" if p.objects_ok else
               f"rebuild image {p.image_id[:12]} from its spec (`shipyard build`): its objects are damaged too "
               f"({p.objects_problem})")
        return Check(name, FAIL, f"no: {cold_note}the previous image {p.image_id[:12]} has a tampered tree and "
                     f"a rollback would refuse to start it ({p.tree_summary})", ev, fix)
    if p.tree == "missing" and not p.objects_ok:
        return Check(name, FAIL, f"no: {cold_note}the previous image {p.image_id[:12]} is not materialised and "
                     f"cannot be restored: {p.objects_problem}", ev,
                     f"rebuild image {p.image_id[:12]} from its spec (`shipyard build`)")
    if not u.cold_phases:
        ev["path"] = "cold redeploy"
        return Check(name, WARN, f"probably: {cold_note}the previous image {p.image_id[:12]} is "
                     f"{'verified' if p.tree == 'intact' else 'restorable from the object store'}, but no rollout "
                     "timing was measured to estimate a cold redeploy", ev,
                     "deploy once more to measure start-up, or keep the old slot warm")
    phases = {k: round(u.cold_phases.get(k, 0.0), 3) for k in COLD_PHASES}
    estimate = p.verify_seconds + sum(phases.values())
    ev.update(path="cold redeploy", estimate_seconds=round(estimate, 3), estimate_from=u.cold_source,
              estimate_phases=phases)
    how = (f"a cold redeploy of the previous image {p.image_id[:12]} "
           f"({'verified' if p.tree == 'intact' else 'restorable from the object store'}), estimated "
           f"{estimate:.1f}s from rollout {u.cold_source} (start {phases['starting']:.1f}s, preview "
           f"{phases['previewing']:.1f}s, switch {phases['switching']:.3f}s)")
    if estimate < UNDO_LIMIT_SECONDS:
        return Check(name, PASS, f"yes: {cold_note}{how}", ev)
    return Check(name, WARN, f"not within a minute: {cold_note}{how}", ev,
                 "keep the old slot warm after a switch (strategy.blue_green.scale_down_delay) so rollback "
                 "is a switch, or make the service start faster")


# -- Blast radius --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlastInputs:
    exposure: dict[str, Any]        # rollout.exposure.Exposure.to_dict() of the live release's spec
    preview_checks: int = 0
    auto_promote: bool = True
    steps: list[str] = field(default_factory=list)


def blast_radius_check(b: BlastInputs) -> Check:
    name = "blast_radius"
    e = b.exposure
    requests = e.get("requests")
    ev: dict[str, Any] = {
        "strategy": e["strategy"], "rate": e["rate"], "max_share_before_verdict": e["max_share"],
        "seconds_to_first_verdict": e.get("seconds"),
        "requests_before_verdict": None if requests is None or requests == float("inf") else round(requests, 1),
        "verdict_step": e.get("step"), "max_weight_without_analysis": e["max_weight_without_analysis"],
        "pass_max_share": BLAST_PASS_MAX_SHARE, "note": e.get("note", "")}
    if b.steps:
        ev["steps"] = b.steps
    if e["strategy"] == "blue_green":
        ev.update(preview_checks=b.preview_checks, auto_promote=b.auto_promote)
        if b.preview_checks == 0:
            gate = "" if b.auto_promote else " (only a human's promote)"
            return Check(name, FAIL, f"100 % of users get a new release before any verdict: blue-green without "
                         f"preview checks{gate}", ev,
                         "add strategy.blue_green.preview_checks, or use a canary whose first step exposes few users")
        return Check(name, WARN, f"100 % of users move at once after {b.preview_checks} preview check(s); no user "
                     "traffic is judged before the switch", ev,
                     "a canary limits the blast radius; with blue-green keep the old slot warm so rollback is a "
                     "switch")
    share = float(e["max_share"])
    if e.get("seconds") is None:
        return Check(name, FAIL, f"no verdict is possible before 100 % at {e['rate']:g} req/s", ev,
                     "lengthen a pause or an analysis step, lower analysis.min_requests, or raise the first weight")
    at = (f"up to {share:g}% of users ({ev['requests_before_verdict']:.0f} requests at {e['rate']:g} req/s) "
          f"before the first possible verdict, {e['seconds']:.0f}s in (step {e.get('step')})")
    if share <= BLAST_PASS_MAX_SHARE:
        return Check(name, PASS, at, ev)
    return Check(name, WARN, at + f": more than {BLAST_PASS_MAX_SHARE:g}%", ev,
                 "start the canary with a smaller set_weight and hold it (pause or analysis) until a verdict")


# -- Drift ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DriftInputs:
    now: float
    report: dict[str, Any] | None          # the last DriftReport.to_dict() (+ last_full_at)
    enforcement: dict[str, str] | None
    interval: float
    full_interval: float


def drift_check(d: DriftInputs) -> Check:
    name = "drift"
    ev: dict[str, Any] = {"enforcement": d.enforcement, "interval": d.interval, "full_interval": d.full_interval}
    r = d.report
    if r is None:
        return Check(name, WARN, "never scanned: nobody knows whether what runs is what was deployed", ev,
                     "run `shipyard drift --full`")
    full_at = r.get("last_full_at")
    ev.update(last_scan={"at": r["scanned_at"], "mode": r["mode"], "clean": r["clean"],
                         "age_seconds": round(d.now - r["scanned_at"], 1)},
              last_full_at=full_at, full_age_seconds=None if full_at is None else round(d.now - full_at, 1))
    if not r["clean"]:
        findings = r.get("findings", [])
        ev["findings"] = [{"kind": f["kind"], "instance": f.get("instance_id"), "detail": f["detail"]}
                          for f in findings[:10]]
        ev["counts"] = r.get("counts", {})
        first = "; ".join(f["detail"] for f in findings[:2])
        return Check(name, FAIL, f"drift found by the {r['mode']} scan: {len(findings)} finding(s): {first}", ev,
                     "`shipyard drift --fix` replaces drifted instances with fresh ones from the pristine image")
    problems, actions = [], []
    if d.now - r["scanned_at"] > d.interval * SCAN_GRACE + SCAN_SLACK_SECONDS:
        problems.append(f"the last scan is {d.now - r['scanned_at']:.0f}s old (interval {d.interval:g}s)")
        actions.append("check that the daemon runs (`shipyard status`)")
    if full_at is None or d.now - full_at > d.full_interval * SCAN_GRACE + SCAN_SLACK_SECONDS:
        problems.append("no full re-hash yet" if full_at is None else
                        f"the last full re-hash is {d.now - full_at:.0f}s old (full_interval {d.full_interval:g}s)")
        actions.append("run `shipyard drift --full`")
    mode = (d.enforcement or {}).get("mode")
    if mode not in ENFORCING:
        problems.append(f"enforcement is {mode or 'unknown'}: writes into image trees are found, not prevented")
        actions.append("run the daemon where Landlock or bubblewrap works (see `shipyard status`)")
    if problems:
        return Check(name, WARN, "clean, but " + "; ".join(problems), ev, "; ".join(actions))
    return Check(name, PASS, f"clean {r['mode']} scan {d.now - r['scanned_at']:.0f}s ago, full re-hash "
                 f"{d.now - full_at:.0f}s ago; enforcement {mode}", ev)


# -- Database ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LastDbCheck:
    rollout_id: str | None
    at: float
    ok: bool
    reasons: list[str]
    versions: list[str]            # the expand migrations it rehearsed


@dataclass(frozen=True)
class DatabaseInputs:
    has_database: bool
    plan: dict[str, Any] | None = None      # MigrationPlan.to_dict()
    gate_blocking: list[dict[str, Any]] = field(default_factory=list)   # findings that stop a deploy
    error: str = ""
    last_check: LastDbCheck | None = None


def database_check(db: DatabaseInputs) -> Check:
    name = "database"
    if not db.has_database:
        return Check(name, PASS, "no database section: no schema to keep compatible", {"database": False})
    ev: dict[str, Any] = {"database": True}
    lc = db.last_check
    if lc is not None:
        ev["last_check"] = {"rollout": lc.rollout_id, "at": lc.at, "ok": lc.ok, "reasons": lc.reasons[:5],
                            "migrations": lc.versions}
    if db.plan is None:
        return Check(name, WARN, f"cannot tell: {db.error or 'the database was not read'}", ev,
                     "make the database reachable from the daemon, then run the checklist again")
    p = db.plan
    pending = [m["version"] for m in p["pending"]]
    ev.update(applied=len(p["applied"]), pending=pending, expand=p["expand"], held=p["held"],
              changed=p["changed"], pg_version=p["pg_version"])
    if p["changed"]:
        return Check(name, FAIL, f"applied migration(s) {', '.join(p['changed'])} were edited afterwards", ev,
                     "an applied migration is history: restore its file and add a new migration instead")
    if db.gate_blocking:
        ev["blocking"] = [{"rule": f["rule"], "where": f"{f['source']}:{f['line']}", "message": f["message"],
                           "fix": f["fix"]} for f in db.gate_blocking[:10]]
        first = db.gate_blocking[0]
        return Check(name, FAIL, f"unsafe pending migration(s): {len(db.gate_blocking)} blocking lint finding(s), "
                     f"e.g. {first['source']}:{first['line']} {first['rule']}: {first['message']}", ev,
                     f"rewrite it: {first['fix']}")
    expand = list(p["expand"])
    if expand:
        if lc is not None and not lc.ok and set(expand) & set(lc.versions):
            return Check(name, FAIL, f"the last check of pending migration(s) {', '.join(expand)} failed: "
                         + "; ".join(lc.reasons[:3]), ev, "fix the migrations or the release, then deploy again")
        if lc is None or not lc.ok or not set(expand) <= set(lc.versions):
            return Check(name, WARN, f"pending migration(s) {', '.join(expand)} lint clean but not rehearsed yet",
                         ev, "run `shipyard db check SPEC` (a deploy rehearses them before any change)")
    held = list(p["held"])
    if held:
        return Check(name, WARN, f"contract migration(s) held back: {', '.join(held)}; the schema still serves "
                     "the old release", ev,
                     "once no old instance runs and the rollback window is closed: `shipyard db contract SERVICE`")
    if expand:
        by = f"rollout {lc.rollout_id}" if lc and lc.rollout_id else "`db check`"
        return Check(name, PASS, f"pending migration(s) {', '.join(expand)} lint clean and rehearsed ({by})", ev)
    return Check(name, PASS, f"no pending migrations ({len(p['applied'])} applied)", ev)
