#!/usr/bin/env python3
"""Canary detection benchmark: how fast does the analysis abort a bad canary, how often does
it abort a good one, and how do a Flagger-style rule and a fixed-horizon test compare?

Live part, on a real daemon, router and shop instances over 127.0.0.1, once per router
(`--router embedded|haproxy|both`: the spec's `router: {kind: ...}`): a paced load of many
distinct users (sticky X-User-Id) meets a canary at 5 % that returns 10 % errors (a) or is
50 ms slower (b); each run times the canary's first answer to the abort and counts the
users' failed requests. Then an A/A canary (identical releases) runs for a few minutes while
the router's per-second series are recorded. Replay part: block-bootstrapped runs of the
recorded seconds (and of bad canaries synthesised from them) judged by our sequential
monitors, by `flagger_rule` and by the fixed-horizon comparison (c, d). Everything started
here is stopped at the end, also on failure or Ctrl-C.
Run: .venv/bin/python benchmarks/canary_detection.py [--router both]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from benchtools import cpu_times, cpu_use, machine, run_bounded, write_doc_section
from canarytools import (
    Judged,
    RingRecorder,
    SeriesRecorder,
    Trace,
    UserLoad,
    bootstrap,
    detect_cell,
    detection,
    fmt_s,
    judge,
    live_summary,
    pct,
    rate_cell,
    rate_ci,
    replay,
    synthetic,
)

from shipyard.analysis import Second, plans_of
from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import example_dir, free_port
from shipyard.errors import ShipyardError
from shipyard.router.haproxy.files import Files as HAProxyFiles
from shipyard.spec.strategy import AnalysisSpec

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
SERVICE, AA_SERVICE = "shop", "shop-aa"
GOAL_S = 10.0
ROUTERS = ("embedded", "haproxy")
TERMINAL = ("succeeded", "failed", "aborted")
WARMUP = 2.0
"""Seconds of load on stable alone before a canary is deployed."""
AFTER = 2.0
"""Seconds of load kept after the abort, to see that v2 answers no one any more."""
SEGMENT_MAX = 500
"""Seconds recorded from one A/A canary (its pause step lasts 10 minutes)."""
STEPS: list[Any] = [{"set_weight": 5}, {"pause": "10m"}]
ANALYSIS = {"interval": "1s"}
"""The spec's analysis: defaults (alpha 0.05, min_requests 50, compare_to_stable with
tolerance 0.1 and latency margin 5 ms) except a verdict every second."""


def release(version: str, error_rate: float = 0.0, extra_ms: float = 0.0) -> str:
    return (f'version = "{version}"\ngreeting = "hello"\n' + (f"error_rate = {error_rate}\n" if error_rate else "")
            + (f"extra_latency_ms = {extra_ms}\n" if extra_ms else ""))


def write_spec(state: Path, name: str, service: str, listen: str, release_toml: str, router: str) -> Path:
    """The example shop as a canary spec (2 replicas, so 1 canary instance at 5 %) on `router`."""
    src = example_dir()
    doc: dict[str, Any] = yaml.safe_load((src / "v1.yaml").read_text())
    doc.update(service=service, listen=listen, replicas=2, router={"kind": router},
               strategy={"canary": {"sticky": {"header": "X-User-Id"}, "steps": STEPS, "analysis": ANALYSIS}})
    doc["build"]["context"] = str((src / doc["build"]["context"]).resolve())
    doc["build"]["files"] = {"release.toml": release_toml}
    doc["health"]["interval"] = "100ms"
    path = state / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- live ------------------------------------------------------------------------------------

async def deploy_first(api: AsyncApiClient, spec: Path) -> None:
    r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
    final = await api.wait_rollout(r["id"], 180)
    if final["phase"] != "succeeded":
        raise ShipyardError(f"the first release {spec.name} ended {final['phase']}: {final['reason']}")


async def until_phase(api: AsyncApiClient, rid: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = await api.get(f"/v1/rollouts/{rid}")
        if doc["rollout"]["phase"] in phases or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.05)


async def end_canary(api: AsyncApiClient, service: str, r: dict[str, Any]) -> None:
    """Abort the rollout if it still runs, and wait until its canary instances are gone, so the
    next run starts from stable alone."""
    if r["phase"] not in TERMINAL:
        with contextlib.suppress(ShipyardError):
            await api.post(f"/v1/services/{service}/abort")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = await api.get(f"/v1/services/{service}")
        if not status["rollout"] and not status["slots"][r["target_slot"]]["instances"]:
            return
        await asyncio.sleep(0.1)
    raise ShipyardError(f"the canary of {service} ({r['id']}) did not stop within 60 s")


def failed_kinds(doc: dict[str, Any]) -> list[str]:
    return [v["kind"] for v in (doc.get("analysis") or {}).get("verdicts", []) if v["status"] == "failed"]


async def live_run(api: AsyncApiClient, spec: Path, port: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One bad canary under the user load: deploy, wait for its end (at most --give-up s), keep
    the load AFTER s more, and read the users' record."""
    load = UserLoad("127.0.0.1", port, args.rate, args.users, seed=seed)
    load.start()
    doc: dict[str, Any] = {}
    try:
        await asyncio.sleep(WARMUP)
        wall0, mono0 = time.time(), time.monotonic()
        r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
        doc = await until_phase(api, r["id"], TERMINAL, args.give_up)
        await asyncio.sleep(AFTER)
    finally:
        await load.stop()
    rollout = doc["rollout"]
    await end_canary(api, SERVICE, rollout)
    aborted = rollout["phase"] == "failed" and rollout["reason"].startswith("analysis failed")
    t_end = rollout["phase_started_at"] - wall0 + mono0 if rollout["phase"] in TERMINAL else None
    hits = load.hits
    v2 = sorted((h for h in hits if h.version == "2"), key=lambda h: h.sent)
    first, last = (v2[0].sent, v2[-1].sent) if v2 else (None, None)

    def ms(xs: list[float]) -> float | None:
        return float(np.median(xs)) * 1000 if xs else None
    return {
        "rollout": rollout["id"], "phase": rollout["phase"], "reason": rollout["reason"], "aborted": aborted,
        "deciding_monitors": failed_kinds(doc),
        "detect_s": t_end - first if t_end is not None and first is not None and aborted else None,
        "v2_gone_s": last - first if first is not None and last is not None else None,
        "last_v2_after_abort_s": last - t_end if last is not None and t_end is not None else None,
        "deploy_to_first_v2_s": first - mono0 if first is not None else None,
        "canary_requests": len(v2), "canary_users": len({h.user for h in v2}),
        "failed_on_canary": sum(1 for h in v2 if h.status >= 500),
        "failed_users": len({h.user for h in v2 if h.status >= 500}),
        "failed_on_stable": sum(1 for h in hits if h.version == "1" and h.status >= 500),
        "no_response": sum(1 for h in hits if h.status == 0),
        "v2_after_abort": sum(1 for h in v2 if t_end is not None and h.sent > t_end),
        "latency_ms": {"v1_p50": ms([h.done - h.sent for h in hits if h.version == "1"]),
                       "v2_p50": ms([h.done - h.sent for h in v2])},
        "load": {"requests": len(hits), "achieved_rps": load.achieved_rps(), "users": len({h.user for h in hits}),
                 "late_p99_ms": float(np.percentile([h.late for h in hits], 99) * 1000) if hits else None},
    }


def recorder(daemon: DaemonProcess, router: str) -> SeriesRecorder:
    """The per-second series of the A/A service as its router counts them: the embedded
    router's `series` control op, or HAProxy's log ring read a second time."""
    if router == "haproxy":
        return RingRecorder(HAProxyFiles(daemon.paths.routers / "haproxy").admin_socket, AA_SERVICE)
    return SeriesRecorder(daemon.paths.router_socket(AA_SERVICE))


async def record_aa(api: AsyncApiClient, state: Path, daemon: DaemonProcess,
                    args: argparse.Namespace, router: str) -> dict[str, Any]:
    """An A/A canary (v1 and v2 differ only in their version string) under the same load, its
    router's per-second series recorded until --aa-seconds seconds at 5 % are in. A canary the
    live analysis aborts (a false abort) ends its segment; the next segment starts a new one.
    The recorder starts once the service is deployed: no HAProxy reload happens after that."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    v1 = write_spec(state, "aa-v1", AA_SERVICE, listen, release("1", args.aa_error_rate), router)
    v2 = write_spec(state, "aa-v2", AA_SERVICE, listen, release("2", args.aa_error_rate), router)
    await deploy_first(api, v1)
    load = UserLoad("127.0.0.1", port, args.rate, args.users, seed=1000)
    rec = recorder(daemon, router)
    load.start()
    rec.start()
    pairs: list[tuple[Second, Second]] = []
    segments: list[dict[str, Any]] = []
    cpu0 = cpu_times()
    try:
        await asyncio.sleep(WARMUP)
        while len(pairs) < args.aa_seconds:
            r = (await api.post("/v1/deploy", {"spec_path": str(v2)}))["rollout"]
            doc = await until_phase(api, r["id"], ("paused", *TERMINAL), 60)
            if doc["rollout"]["phase"] != "paused":
                raise ShipyardError(f"the A/A canary {r['id']} did not reach its pause: {doc['rollout']['reason']}")
            if isinstance(rec, RingRecorder):
                await rec.follow()           # the canary's table (its sticky names) may have reloaded HAProxy
            began = time.time()
            want = min(SEGMENT_MAX, args.aa_seconds - len(pairs))
            while time.time() < began + want + 2:
                await asyncio.sleep(1.0)
                doc = await api.get(f"/v1/rollouts/{r['id']}")
                if doc["rollout"]["phase"] in TERMINAL:
                    break
            rollout = doc["rollout"]
            now = await rec.poll()
            end = int(rollout["phase_started_at"]) - 1 if rollout["phase"] in TERMINAL else int(now) - 1
            canary, stable = rollout["target_slot"], rollout["previous_slot"]
            seen = [t for t, s in rec.tracks.get(canary, {}).items() if t >= int(began) - 2 and s.requests]
            first = min(seen) + 1 if seen else end + 1       # its first second at 5 % was partial
            seg = rec.pairs(canary, stable, first, min(end, first + want - 1))
            pairs += seg
            segments.append({"rollout": r["id"], "first_t": first, "seconds": len(seg), "phase": rollout["phase"],
                             "false_abort": rollout["phase"] == "failed", "reason": rollout["reason"],
                             "live_verdicts": [{"kind": v["kind"], "status": v["status"], "detail": v["detail"],
                                                "peak_e_value": v["evidence"].get("peak_e_value")}
                                               for v in (doc.get("analysis") or {}).get("verdicts", [])]})
            print(f"  A/A segment {len(segments)}: {len(seg)} s recorded, {rollout['phase']}", flush=True)
            await end_canary(api, AA_SERVICE, rollout)
    finally:
        await load.stop()
        await rec.stop()
    return {"pairs": pairs, "segments": segments, "error_rate": args.aa_error_rate, "cpu": cpu_use(cpu0, cpu_times()),
            "load": {"achieved_rps": load.achieved_rps(), "users": len({h.user for h in load.hits}),
                     "failed": sum(1 for h in load.hits if h.status == 0 or h.status >= 500)}}


async def live(args: argparse.Namespace, state: Path, router: str) -> dict[str, Any]:
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths, timeout=180)
    out: dict[str, Any] = {}
    try:
        if args.live_runs:
            port = free_port()
            listen = f"127.0.0.1:{port}"
            print(f"[{router}] state dir {state}; deploying shop v1 on {listen} ...", flush=True)
            await deploy_first(api, write_spec(state, "v1", SERVICE, listen, release("1"), router))
            cpu0, t0 = cpu_times(), time.monotonic()
            for key, rel in (("errors", release("2", error_rate=0.1)), ("latency", release("2", extra_ms=50))):
                spec = write_spec(state, f"v2-{key}", SERVICE, listen, rel, router)
                out[key] = []
                for i in range(args.live_runs):
                    run = await live_run(api, spec, port, args, seed=i + 1)
                    out[key].append(run)
                    print(f"  [{router}] ({'a' if key == 'errors' else 'b'}) run {i + 1}: {run['phase']}, "
                          f"first canary answer -> abort {fmt_s(run['detect_s'])}, "
                          f"{run['failed_on_canary']} failed on the canary "
                          f"({run['canary_requests']} served), {run['reason'][:100]}", flush=True)
            out["live_cpu"] = {**cpu_use(cpu0, cpu_times()), "seconds": time.monotonic() - t0}
            await api.request("DELETE", f"/v1/services/{SERVICE}")
        if args.aa_from is None:
            print(f"[{router}] recording an A/A canary for {args.aa_seconds} s ...", flush=True)
            out["aa"] = await record_aa(api, state, daemon, args, router)
        return out
    finally:
        for svc in (SERVICE, AA_SERVICE):
            with contextlib.suppress(ShipyardError):
                await api.request("DELETE", f"/v1/services/{svc}")
        await api.aclose()
        daemon.stop()


# -- replay ----------------------------------------------------------------------------------

def replay_all(args: argparse.Namespace, pairs: list[tuple[Second, Second]]) -> dict[str, Any]:
    """(c) and (d): every scenario judged by the three methods over --run-seconds s runs."""
    plans = plans_of(AnalysisSpec.model_validate(ANALYSIS))
    trace = Trace.of(pairs)
    rng = np.random.default_rng(args.seed)
    seconds, block = args.run_seconds, args.block
    scenarios = [
        ("aa", "A/A, block bootstrap of the recorded seconds", args.replay_runs, None),
        ("aa_resplit", "A/A, the same with each second's requests split again at random", args.replay_runs, None),
        ("aa_synthetic", "A/A, synthetic (simulated, not recorded)", args.replay_runs, None),
        ("errors", "bad: recorded seconds + 10 % errors injected on the canary side", args.bad_runs, (0.1, 0.0)),
        ("latency", "bad: recorded seconds + 50 ms injected on the canary side", args.bad_runs, (0.0, 50.0)),
    ]
    out: dict[str, Any] = {"trace": trace.describe(), "runs_seconds": seconds, "block_s": block,
                           "plans": [p.key for p in plans], "bar": plans[0].bar if plans else None}
    for key, title, runs, bad in scenarios:
        t0 = time.monotonic()
        if key == "aa_synthetic":
            source = synthetic(rng, runs)
        else:
            extra, plus = bad or (0.0, 0.0)
            source = replay(trace, bootstrap(rng, len(trace), runs, seconds, block), rng, extra, plus,
                            resplit=key == "aa_resplit")
        j = judge(source, runs, seconds, plans)
        out[key] = {"title": title, "runs": runs, **summary_of(j), "compute_s": time.monotonic() - t0}
        print(f"  replay {key}: {runs} runs x {seconds} s judged in {time.monotonic() - t0:.1f} s", flush=True)
    return out


def summary_of(j: Judged) -> dict[str, Any]:
    methods = {"ours": j.ours, "flagger": j.flagger, "fixed": j.fixed, "fixed_margin": j.fixed_margin}
    return {"failed": {k: rate_ci(int((v >= 0).sum()), v.size) for k, v in methods.items()},
            "detection": {k: detection(v) for k, v in methods.items()},
            "ours_by_monitor": j.ours_by_monitor, "fixed_inconclusive": j.fixed_inconclusive}


# -- report ----------------------------------------------------------------------------------

def goals(r: dict[str, Any], alpha: float) -> list[str]:
    """The goals one router's run missed, in words (empty: all met)."""
    missed = []
    a, b, c = r["live"].get("errors"), r["live"].get("latency"), r["replay"]["aa"]["failed"]["ours"]
    if a is not None and (a["aborted"] < a["runs"] or (a["detect_s"]["median"] or 1e9) > GOAL_S):
        missed.append(f"(a) 10 % errors: {a['aborted']}/{a['runs']} aborted, first canary answer -> abort median "
                      f"{fmt_s(a['detect_s']['median'])} (goal: every run aborted, median <= {GOAL_S:g} s)")
    if b is not None and b["aborted"] < b["runs"]:
        missed.append(f"(b) +50 ms: only {b['aborted']}/{b['runs']} runs aborted")
    if c["rate"] is None or c["rate"] > alpha:
        missed.append(f"(c) A/A false-abort rate {pct(c['rate'])} > alpha {alpha:g}")
    return missed


def med_max_s(s: dict[str, Any], key: str) -> str:
    return f"{fmt_s(s[key]['median'])} / {fmt_s(s[key]['max'])}"


def summary_rows(name: str, r: dict[str, Any]) -> list[str]:
    """The router's rows of the one table: each bad canary live, then the A/A canary live and
    replayed (false aborts)."""
    rows = []
    for key, title in (("errors", "(a) 10 % errors"), ("latency", "(b) +50 ms")):
        s = r["live"].get(key)
        if s is None:
            rows.append(f"| {name} | {title} | not run (--live-runs 0) | | | |")
            continue
        f = s["failed_on_canary"]
        rows.append(f"| {name} | {title}, live | {s['aborted']} of {s['runs']} aborted | {med_max_s(s, 'detect_s')} "
                    f"| {f['median']:g} / {f['max']:g} ({s['failed_on_canary_total']}) "
                    f"| {s['failed_users']['median']:g} / {s['failed_users']['max']:g} |")
    aa, tr, ours = r["aa"], r["replay"]["trace"], r["replay"]["aa"]
    false_live = sum(seg["false_abort"] for seg in aa["segments"])
    rows.append(f"| {name} | A/A, live ({tr['seconds']} s recorded at 5 %) | {false_live} false of "
                f"{len(aa['segments'])} A/A canar{'y' if len(aa['segments']) == 1 else 'ies'} | - | - | - |")
    rows.append(f"| {name} | A/A, replayed ({ours['runs']} runs of {r['replay']['runs_seconds']} s, ours) | "
                f"{rate_cell(ours['failed']['ours'])} false | - | - | - |")
    return rows


LIVE_ROWS: list[tuple[str, Any, str]] = [
    ("runs aborted by the analysis", lambda s: f"{s['aborted']} of {s['runs']}", "all"),
    ("first canary answer -> rollout failed (the abort)", lambda s: med_max_s(s, "detect_s"), "<= 10 s (a)"),
    ("first -> last request answered by the canary", lambda s: med_max_s(s, "v2_gone_s"), ""),
    ("user requests failed on the canary (total over the runs)",
     lambda s: f"{s['failed_on_canary']['median']:g} / {s['failed_on_canary']['max']:g} "
               f"({s['failed_on_canary_total']})", ""),
    ("distinct users who saw a failure", lambda s: f"{s['failed_users']['median']:g} / {s['failed_users']['max']:g}",
     ""),
    ("requests answered by the canary; distinct users on it",
     lambda s: f"{s['canary_requests']['median']:g}; {s['canary_users']['median']:g}", ""),
    ("answer time p50, stable / canary (client side)",
     lambda s: f"{s['latency_ms']['v1_p50']:.1f} / {s['latency_ms']['v2_p50']:.1f} ms", ""),
    ("requests sent after the abort and answered by the canary (total)", lambda s: f"{s['v2_after_abort']}", ""),
    ("deciding monitor", lambda s: ", ".join(s["deciding_monitors"]) or "-", ""),
    ("failed on stable; without any answer", lambda s: f"{s['failed_on_stable']}; {s['no_response']}", "0"),
]


def aa_sentence(name: str, r: dict[str, Any]) -> str:
    tr, aa = r["replay"]["trace"], r["aa"]
    return (f"A/A recording, {name}: {tr['seconds']} s at 5 % in {len(aa['segments'])} segment(s), both releases "
            f"with error_rate {aa['error_rate']:g}; canary {tr['canary']['rps']:.1f} requests/s "
            f"(p50 {tr['canary']['p50_ms']:.2f} ms, p99 {tr['canary']['p99_ms']:.2f} ms, errors "
            f"{pct(tr['canary']['error_rate'])}), stable {tr['stable']['rps']:.1f} requests/s "
            f"(p50 {tr['stable']['p50_ms']:.2f} ms, p99 {tr['stable']['p99_ms']:.2f} ms, errors "
            f"{pct(tr['stable']['error_rate'])}); machine CPU {aa.get('cpu', {}).get('busy', 0):.0%} busy; "
            f"series read from {aa.get('source', 'the router')}.")


def markdown(res: dict[str, Any]) -> str:
    m, o, routers = res["machine"], res["options"], res["routers"]
    before = "; ".join(f"{k} {r['loadavg_before'][0]:.2f}" for k, r in routers.items())
    lines = [f"Run of {res['date']} on {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']}, "
             f"{m.get('haproxy') or 'HAProxy not installed'} (1-min load average before each router's part: "
             f"{before}; CPU probe, a fixed Python loop: {m.get('cpu_probe_ms', 0):.0f} ms, lower is faster). "
             f"Each router: {o['live_runs']} live run(s) per bad canary, then {o['aa_seconds']} s of A/A canary "
             f"recorded; {o['rate']:g} requests/s offered from {o['users']:,} user ids.", "",
             "| router | canary | runs aborted (A/A: false aborts) | first canary answer -> abort, p50 / max "
             "| user requests failed on the canary, p50 / max (total) | distinct users who saw a failure, p50 / max |",
             "|---|---|---|---|---|---|"]
    for name, r in routers.items():
        lines += summary_rows(name, r)
    live = [(name, key, r["live"][key]) for name, r in routers.items() for key in ("errors", "latency")
            if r["live"].get(key)]
    if live:
        cpu = "; ".join(f"{name} {(r['live'].get('live_cpu') or {}).get('busy', 0):.0%}"
                        for name, r in routers.items() if r["live"].get("live_cpu"))
        lines += ["", f"Live runs in detail (median / max over the runs; machine CPU busy during them: {cpu}).", "",
                  "| figure | " + " | ".join(f"{n} ({'a' if k == 'errors' else 'b'})" for n, k, _ in live)
                  + " | goal |", "|---|" + "---|" * len(live) + "---|"]
        lines += [f"| {label} | " + " | ".join(f(s) for _, _, s in live) + f" | {goal} |"
                  for label, f, goal in LIVE_ROWS]
    lines.append("")
    lines += [aa_sentence(name, r) for name, r in routers.items()]
    first = next(iter(routers.values()))["replay"]
    lines += ["", f"Replayed runs of {first['runs_seconds']} s (blocks of {first['block_s']} s) of each router's "
              "recording. A/A rows: share of runs a method failed (false aborts). Bad rows: seconds of canary "
              "traffic until the abort.", "",
              "| router | traces | ours (sequential, every second) | Flagger-style (60 s, threshold 5) "
              "| fixed-horizon 300 s (`fixed_horizon`) | fixed-horizon 300 s, 5 ms margin |",
              "|---|---|---|---|---|---|"]
    for name, r in routers.items():
        for key in ("aa", "aa_resplit", "aa_synthetic", "errors", "latency"):
            s = r["replay"][key]
            cell = (lambda k, s=s: rate_cell(s["failed"][k])) if key.startswith("aa") else \
                (lambda k, s=s: detect_cell(s["detection"][k]))
            lines.append(f"| {name} | {s['title']} ({s['runs']} runs) | " + " | ".join(
                cell(k) for k in ("ours", "flagger", "fixed", "fixed_margin")) + " |")
    if o["aa_seconds"] < 480:
        lines += ["", f"This run recorded {o['aa_seconds']} s of A/A per router (`--aa-seconds {o['aa_seconds']}`, "
                  "the default is 480) to fit both routers in its time."]
    missed = res["missed"]
    lines += ["", "Goals: " + ("all met, on every router." if not missed else "**missed**: " + "; ".join(missed))]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------

def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router", choices=(*ROUTERS, "both"), default=None,
                   help="the service's router.kind; both (the default; haproxy with --quick): each in turn, "
                   "with its own daemon, in one table")
    p.add_argument("--live-runs", type=int, default=7, help="runs of each bad canary (a, b); 0 skips them")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s offered by the user load")
    p.add_argument("--users", type=int, default=5000, help="distinct user ids (X-User-Id)")
    p.add_argument("--give-up", type=float, default=120.0, help="seconds after which a live run stops waiting")
    p.add_argument("--aa-seconds", type=int, default=480, help="seconds of A/A canary traffic to record")
    p.add_argument("--aa-error-rate", type=float, default=0.005, help="error_rate of both A/A releases")
    p.add_argument("--aa-from", type=Path, help="replay this recorded A/A series instead of recording one "
                   "(one router only: the router that recorded it)")
    p.add_argument("--replay-runs", type=int, default=1000, help="A/A runs replayed (and synthesised)")
    p.add_argument("--bad-runs", type=int, default=200, help="runs of each synthesised bad canary")
    p.add_argument("--run-seconds", type=int, default=600, help="length of each replayed run")
    p.add_argument("--block", type=int, default=30, help="block length of the bootstrap, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run (< 2 min, HAProxy unless --router says): "
                   "1 live run each, 30 s of A/A, 200 A/A and 50 bad replays; JSON to the temp dir, not for the doc")
    p.add_argument("--output", type=Path)
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the canary section of {DOC} (--router both)")
    args = p.parse_args(argv)
    if args.quick:
        if args.write_doc:
            p.error("--quick is a smoke run: its figures do not go into the doc")
        args.live_runs, args.aa_seconds, args.replay_runs, args.bad_runs = 1, 30, 200, 50
    # one router takes about 85 s quick on this shared 2-CPU VM, both about 170 s: the smoke
    # run takes the newer path, HAProxy, unless asked for both
    args.router = args.router or ("haproxy" if args.quick else "both")
    if args.replay_runs < 200 or args.run_seconds < 300 or args.aa_seconds < 30 or args.block < 1:
        p.error("the acceptance needs --replay-runs >= 200, --run-seconds >= 300 (the fixed horizon), "
                "--aa-seconds >= 30 and --block >= 1")
    if args.write_doc and args.router != "both":
        p.error("the doc's table has both routers: run --write-doc with --router both")
    if args.aa_from is not None and args.router == "both":
        p.error("--aa-from replays one router's recording: name that router with --router embedded or haproxy")
    routers = ROUTERS if args.router == "both" else (args.router,)
    output = args.output or (Path(tempfile.gettempdir()) / "canary_detection.quick.json" if args.quick
                             else HERE / "results" / "canary_detection.json")
    res: dict[str, Any] = {
        "benchmark": "canary_detection", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(), "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "alpha": AnalysisSpec.model_validate(ANALYSIS).alpha, "goal_s": GOAL_S, "routers": {}}
    for router in routers:
        series_file = output.with_name(output.stem + ("" if router == "embedded" else f".{router}") + ".aa_series.json")
        got = run_router(args, router, series_file)
        if isinstance(got, int):
            return got
        res["routers"][router] = got
    res["missed"] = [f"{name}: {m}" for name, r in res["routers"].items() for m in r["missed"]]
    res["ok"] = not res["missed"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + markdown(res) + "\n")
    print(f"JSON: {output}")
    if args.write_doc:
        write_doc_section(DOC, "canary", markdown(res))
        print(f"doc: {DOC}")
    return 0 if res["ok"] else 1


def run_router(args: argparse.Namespace, router: str, series_file: Path) -> dict[str, Any] | int:
    """One router's live part (its own daemon and state dir, removed after) and replay; an exit
    code when it failed."""
    load_before = loadavg()
    lv: dict[str, Any] | int = {}
    if args.live_runs or args.aa_from is None:
        lv = run_bounded("sybench", lambda state, _children: live(args, state, router),
                         failure=f"benchmark failed on the {router} router")
    if isinstance(lv, int):
        return lv
    if args.aa_from is not None:
        doc = json.loads(args.aa_from.read_text())
        aa = {k: v for k, v in doc.items() if k != "pairs"}
        pairs = [(Second.from_dict(c), Second.from_dict(s)) for c, s in doc["pairs"]]
    else:
        aa = lv.pop("aa")
        pairs = aa.pop("pairs")
        aa["source"] = ("HAProxy's log ring (`show events`), through the daemon's log parser" if router == "haproxy"
                        else "the router's `series` control op")
        series_file.parent.mkdir(parents=True, exist_ok=True)
        series_file.write_text(json.dumps({**aa, "pairs": [[c.to_dict(), s.to_dict()] for c, s in pairs]}) + "\n")
    print(f"[{router}] replaying {len(pairs)} recorded A/A seconds ...", flush=True)
    r: dict[str, Any] = {
        "loadavg_before": load_before,
        "live": {k: live_summary(v) for k, v in lv.items() if k in ("errors", "latency")}
                | {"live_cpu": lv.get("live_cpu")},
        "live_runs": {k: v for k, v in lv.items() if k in ("errors", "latency")},
        "aa": aa, "aa_series": str(args.aa_from or series_file), "replay": replay_all(args, pairs),
        "loadavg_after": loadavg()}
    r["missed"] = goals(r, AnalysisSpec.model_validate(ANALYSIS).alpha)
    return r


if __name__ == "__main__":
    sys.exit(main())
