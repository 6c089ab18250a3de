#!/usr/bin/env python3
"""Canary detection benchmark: how fast does the analysis abort a bad canary, how often does
it abort a good one, and how do a Flagger-style rule and a fixed-horizon test compare?

Live part, on a real daemon, router and shop instances over 127.0.0.1: a paced load of many
distinct users (sticky X-User-Id) meets a canary at 5 % that returns 10 % errors (a) or is
50 ms slower (b); each run times the canary's first answer to the abort and counts the
users' failed requests. Then an A/A canary (identical releases) runs for a few minutes while
the router's per-second series are recorded. Replay part: block-bootstrapped runs of the
recorded seconds (and of bad canaries synthesised from them) judged by our sequential
monitors, by `flagger_rule` and by the fixed-horizon comparison (c, d). Everything started
here is stopped at the end, also on failure or Ctrl-C.
Run: .venv/bin/python benchmarks/canary_detection.py"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from benchtools import cpu_times, cpu_use, kill_everything_under, machine, write_doc_section
from canarytools import (
    Judged,
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
from shipyard.spec.strategy import AnalysisSpec

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
SERVICE, AA_SERVICE = "shop", "shop-aa"
GOAL_S = 10.0
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


def write_spec(state: Path, name: str, service: str, listen: str, release_toml: str) -> Path:
    """The example shop as a canary spec (2 replicas, so 1 canary instance at 5 %)."""
    src = example_dir()
    doc: dict[str, Any] = yaml.safe_load((src / "v1.yaml").read_text())
    doc.update(service=service, listen=listen, replicas=2,
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


async def record_aa(api: AsyncApiClient, state: Path, daemon: DaemonProcess,
                    args: argparse.Namespace) -> dict[str, Any]:
    """An A/A canary (v1 and v2 differ only in their version string) under the same load, its
    router's per-second series recorded until --aa-seconds seconds at 5 % are in. A canary the
    live analysis aborts (a false abort) ends its segment; the next segment starts a new one."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    v1 = write_spec(state, "aa-v1", AA_SERVICE, listen, release("1", args.aa_error_rate))
    v2 = write_spec(state, "aa-v2", AA_SERVICE, listen, release("2", args.aa_error_rate))
    await deploy_first(api, v1)
    load = UserLoad("127.0.0.1", port, args.rate, args.users, seed=1000)
    rec = SeriesRecorder(daemon.paths.router_socket(AA_SERVICE))
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


async def live(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths, timeout=180)
    out: dict[str, Any] = {}
    try:
        if args.live_runs:
            port = free_port()
            listen = f"127.0.0.1:{port}"
            print(f"state dir {state}; deploying shop v1 on {listen} ...", flush=True)
            await deploy_first(api, write_spec(state, "v1", SERVICE, listen, release("1")))
            cpu0, t0 = cpu_times(), time.monotonic()
            for key, rel in (("errors", release("2", error_rate=0.1)), ("latency", release("2", extra_ms=50))):
                spec = write_spec(state, f"v2-{key}", SERVICE, listen, rel)
                out[key] = []
                for i in range(args.live_runs):
                    run = await live_run(api, spec, port, args, seed=i + 1)
                    out[key].append(run)
                    print(f"  ({'a' if key == 'errors' else 'b'}) run {i + 1}: {run['phase']}, "
                          f"first canary answer -> abort {fmt_s(run['detect_s'])}, "
                          f"{run['failed_on_canary']} failed on the canary "
                          f"({run['canary_requests']} served), {run['reason'][:100]}", flush=True)
            out["live_cpu"] = {**cpu_use(cpu0, cpu_times()), "seconds": time.monotonic() - t0}
            await api.request("DELETE", f"/v1/services/{SERVICE}")
        if args.aa_from is None:
            print(f"recording an A/A canary for {args.aa_seconds} s ...", flush=True)
            out["aa"] = await record_aa(api, state, daemon, args)
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

def goals(res: dict[str, Any]) -> list[str]:
    """The goals missed, in words (empty: all met)."""
    missed = []
    a, b, c = res["live"].get("errors"), res["live"].get("latency"), res["replay"]["aa"]["failed"]["ours"]
    if a is not None and (a["aborted"] < a["runs"] or (a["detect_s"]["median"] or 1e9) > GOAL_S):
        missed.append(f"(a) 10 % errors: {a['aborted']}/{a['runs']} aborted, first canary answer -> abort median "
                      f"{fmt_s(a['detect_s']['median'])} (goal: every run aborted, median <= {GOAL_S:g} s)")
    if b is not None and b["aborted"] < b["runs"]:
        missed.append(f"(b) +50 ms: only {b['aborted']}/{b['runs']} runs aborted")
    if c["rate"] is None or c["rate"] > res["alpha"]:
        missed.append(f"(c) A/A false-abort rate {pct(c['rate'])} > alpha {res['alpha']:g}")
    return missed


def markdown(res: dict[str, Any]) -> str:
    m, lv, rp = res["machine"], res["live"], res["replay"]
    lines = [f"Run of {res['date']} on {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']} "
             f"(1-min load average before the run: {m['loadavg_1min_before']:.2f}).", ""]
    a, b = lv.get("errors"), lv.get("latency")
    if a and b:
        cpu = lv.get("live_cpu") or {}
        lines += [f"Live runs: {a['runs']} per canary, {res['options']['rate']:g} requests/s offered "
                  f"({a['achieved_rps']:.0f} achieved) from {res['options']['users']:,} user ids; machine CPU "
                  f"{cpu.get('busy', 0):.0%} busy during them.", "",
                  "| figure (median / max over the runs) | (a) canary with 10 % errors | (b) canary +50 ms | goal |",
                  "|---|---|---|---|"]
        rows = [("runs aborted by the analysis", lambda s: f"{s['aborted']} of {s['runs']}", "all"),
                ("first canary answer -> rollout failed (the abort)",
                 lambda s: f"{fmt_s(s['detect_s']['median'])} / {fmt_s(s['detect_s']['max'])}", "<= 10 s (a)"),
                ("first -> last request answered by the canary",
                 lambda s: f"{fmt_s(s['v2_gone_s']['median'])} / {fmt_s(s['v2_gone_s']['max'])}", ""),
                ("user requests failed on the canary (total over the runs)",
                 lambda s: f"{s['failed_on_canary']['median']:g} / {s['failed_on_canary']['max']:g} "
                           f"({s['failed_on_canary_total']})", ""),
                ("distinct users who saw a failure", lambda s: f"{s['failed_users']['median']:g} / "
                                                               f"{s['failed_users']['max']:g}", ""),
                ("requests answered by the canary; distinct users on it",
                 lambda s: f"{s['canary_requests']['median']:g}; {s['canary_users']['median']:g}", ""),
                ("answer time p50, stable / canary (client side)",
                 lambda s: f"{s['latency_ms']['v1_p50']:.1f} / {s['latency_ms']['v2_p50']:.1f} ms", ""),
                ("requests sent after the abort and answered by the canary (total)",
                 lambda s: f"{s['v2_after_abort']}", ""),
                ("deciding monitor", lambda s: ", ".join(s["deciding_monitors"]) or "-", ""),
                ("failed on stable; without any answer", lambda s: f"{s['failed_on_stable']}; {s['no_response']}", "0")]
        lines += [f"| {label} | {f(a)} | {f(b)} | {goal} |" for label, f, goal in rows]
    else:
        lines.append("Live runs (a), (b): not run in this invocation (--live-runs 0).")
    tr, aa = rp["trace"], res["aa"]
    lines += ["", f"A/A recording: {tr['seconds']} s at 5 % in {len(aa['segments'])} segment(s), both releases with "
              f"error_rate {aa['error_rate']:g}; canary {tr['canary']['rps']:.1f} requests/s "
              f"(p50 {tr['canary']['p50_ms']:.2f} ms, p99 {tr['canary']['p99_ms']:.2f} ms, errors "
              f"{pct(tr['canary']['error_rate'])}), stable {tr['stable']['rps']:.1f} requests/s "
              f"(p50 {tr['stable']['p50_ms']:.2f} ms, p99 {tr['stable']['p99_ms']:.2f} ms, errors "
              f"{pct(tr['stable']['error_rate'])}); machine CPU {aa.get('cpu', {}).get('busy', 0):.0%} busy. Live false "
              f"aborts while recording: {sum(s['false_abort'] for s in aa['segments'])}.", "",
              f"Replayed runs of {rp['runs_seconds']} s (blocks of {rp['block_s']} s). A/A rows: share of runs "
              "a method failed (false aborts). Bad rows: seconds of canary traffic until the abort.", "",
              "| traces | ours (sequential, every second) | Flagger-style (60 s, threshold 5) "
              "| fixed-horizon 300 s (`fixed_horizon`) | fixed-horizon 300 s, 5 ms margin |", "|---|---|---|---|---|"]
    for key in ("aa", "aa_resplit", "aa_synthetic", "errors", "latency"):
        s = rp[key]
        cell = (lambda k, s=s: rate_cell(s["failed"][k])) if key.startswith("aa") else \
            (lambda k, s=s: detect_cell(s["detection"][k]))
        lines.append(f"| {s['title']} ({s['runs']} runs) | " + " | ".join(
            cell(k) for k in ("ours", "flagger", "fixed", "fixed_margin")) + " |")
    missed = res["missed"]
    lines += ["", "Goals: " + ("all met." if not missed else "**missed**: " + "; ".join(missed))]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--live-runs", type=int, default=7, help="runs of each bad canary (a, b); 0 skips them")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s offered by the user load")
    p.add_argument("--users", type=int, default=5000, help="distinct user ids (X-User-Id)")
    p.add_argument("--give-up", type=float, default=120.0, help="seconds after which a live run stops waiting")
    p.add_argument("--aa-seconds", type=int, default=480, help="seconds of A/A canary traffic to record")
    p.add_argument("--aa-error-rate", type=float, default=0.005, help="error_rate of both A/A releases")
    p.add_argument("--aa-from", type=Path, help="replay this recorded A/A series instead of recording one")
    p.add_argument("--replay-runs", type=int, default=1000, help="A/A runs replayed (and synthesised)")
    p.add_argument("--bad-runs", type=int, default=200, help="runs of each synthesised bad canary")
    p.add_argument("--run-seconds", type=int, default=600, help="length of each replayed run")
    p.add_argument("--block", type=int, default=30, help="block length of the bootstrap, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run (< 2 min): 1 live run each, 40 s of A/A, "
                   "200 A/A and 50 bad replays; JSON to the temp dir, not for the doc")
    p.add_argument("--output", type=Path)
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the canary section of {DOC}")
    args = p.parse_args(argv)
    if args.quick:
        if args.write_doc:
            p.error("--quick is a smoke run: its figures do not go into the doc")
        args.live_runs, args.aa_seconds, args.replay_runs, args.bad_runs = 1, 40, 200, 50
    if args.replay_runs < 200 or args.run_seconds < 300 or args.aa_seconds < 30 or args.block < 1:
        p.error("the acceptance needs --replay-runs >= 200, --run-seconds >= 300 (the fixed horizon), "
                "--aa-seconds >= 30 and --block >= 1")
    output = args.output or (Path(tempfile.gettempdir()) / "canary_detection.quick.json" if args.quick
                             else HERE / "results" / "canary_detection.json")
    series_file = output.with_name(output.stem + ".aa_series.json")
    load_before = float(Path("/proc/loadavg").read_text().split()[0])
    state = Path(tempfile.mkdtemp(prefix="sybench"))
    try:
        lv = asyncio.run(live(args, state)) if args.live_runs or args.aa_from is None else {}
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except ShipyardError as e:
        print(f"benchmark failed: {e.message}" + (f"\n  {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    finally:
        kill_everything_under(state)
        shutil.rmtree(state, ignore_errors=True)
    if args.aa_from is not None:
        doc = json.loads(args.aa_from.read_text())
        aa = {k: v for k, v in doc.items() if k != "pairs"}
        pairs = [(Second.from_dict(c), Second.from_dict(s)) for c, s in doc["pairs"]]
    else:
        aa = lv.pop("aa")
        pairs = aa.pop("pairs")
    return finish(args, lv, aa, pairs, output, series_file, load_before)


def finish(args: argparse.Namespace, lv: dict[str, Any], aa: dict[str, Any], pairs: list[tuple[Second, Second]],
           output: Path, series_file: Path, load_before: float) -> int:
    print(f"replaying {len(pairs)} recorded A/A seconds ...", flush=True)
    res: dict[str, Any] = {
        "benchmark": "canary_detection", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "loadavg_1min_before": load_before},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "alpha": AnalysisSpec.model_validate(ANALYSIS).alpha, "goal_s": GOAL_S,
        "live": {k: live_summary(v) for k, v in lv.items() if k in ("errors", "latency")}
                | {"live_cpu": lv.get("live_cpu")},
        "live_runs": {k: v for k, v in lv.items() if k in ("errors", "latency")},
        "aa": aa, "aa_series": str(series_file), "replay": replay_all(args, pairs)}
    res["missed"] = goals(res)
    res["ok"] = not res["missed"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2) + "\n")
    if args.aa_from is None:
        series_file.write_text(json.dumps({**aa, "pairs": [[c.to_dict(), s.to_dict()] for c, s in pairs]}) + "\n")
    print("\n" + markdown(res) + "\n")
    print(f"JSON: {output}")
    if args.write_doc:
        write_doc_section(DOC, "canary", markdown(res))
        print(f"doc: {DOC}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
