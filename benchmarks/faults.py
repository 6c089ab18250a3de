#!/usr/bin/env python3
"""Faults benchmark (issue 13): what a router crash, an overload with switches and a long
run of switches cost, each next to the same run's baseline.

A real daemon on a temporary state dir deploys the example shop v1 then v2 (both slots
warm) and then, in this order:
  1. router kill -9 under paced load (8 workers, half on a new connection per request):
     failed requests, refused connections, the longest gap without a successful answer
     (and the same figure over as long a stretch with no kill), time until a new router
     process runs and until the service answers again;
  2. 1,000 connections (wrk) for N seconds without switching, then the same with a
     rollback every second: failed requests (errors + non-2xx), p99 of each and the ratio
     p99_switching / p99_baseline (issue 13 wants 0 failed and a ratio <= 3);
  3. a soak: paced load, a switch every 5 s, the daemon's and the router's RSS and open
     fds sampled every few seconds; least-squares slopes after a warm-up.
Every process it starts is stopped at the end, also on failure or Ctrl-C.
Run: .venv/bin/python benchmarks/faults.py [--quick] [--json PATH] [--write-doc]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchtools import (
    Children,
    cpu_times,
    cpu_use,
    machine,
    publish,
    run_bounded,
    run_wrk,
)

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import example_dir, free_port, write_specs
from shipyard.devtools.soak import PacedLoad, alternating_switcher, router_pid, soak
from shipyard.errors import ShipyardError

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
RESULTS = HERE / "results" / "faults.json"
SECTION = "faults"
SERVICE = "shop"
P99_RATIO_GOAL = 3.0


async def deploy(api: AsyncApiClient, spec: Path) -> None:
    r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
    r = await api.wait_rollout(r["id"], 120)
    if r["phase"] != "succeeded":
        raise ShipyardError(f"deploying {spec.name} ended {r['phase']}: {r.get('reason')}")


def longest_gap_ms(answered: list[tuple[float, float]], since: float, until: float) -> float:
    """Longest stretch in [since, until] with no successful answer arriving."""
    ends = sorted(e for _s, e in answered if since <= e <= until)
    points = [since, *ends, until]
    return round(max(b - a for a, b in zip(points, points[1:], strict=False)) * 1000, 1)


# -- 1. router kill -9 -----------------------------------------------------------------------

async def router_kill(state: Path, port: int, kills: int, between: float) -> dict[str, Any]:
    load = PacedLoad("127.0.0.1", port, workers=8, pace=0.04, record=True)
    runs = []
    async with load:
        await asyncio.sleep(between)
        t_base = time.monotonic()
        await asyncio.sleep(between)
        baseline_gap = longest_gap_ms(load.answered, t_base, time.monotonic())
        for _ in range(kills):
            pid = router_pid(state, SERVICE)
            if pid is None:
                raise ShipyardError("no router process found to kill")
            failed0, refused0 = load.failed, load.refused
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            new_pid, t_new = None, None
            deadline = t_kill + 20
            while time.monotonic() < deadline:
                p = router_pid(state, SERVICE)
                if p is not None and p != pid:
                    new_pid, t_new = p, time.monotonic()
                    break
                await asyncio.sleep(0.02)
            while time.monotonic() < deadline and not any(s > t_kill for s, _e in load.answered[-50:]):
                await asyncio.sleep(0.02)
            back = min((e for s, e in load.answered if s > t_kill), default=None)
            await asyncio.sleep(between)
            runs.append({
                "killed_pid": pid, "new_pid": new_pid,
                "failed": load.failed - failed0, "refused": load.refused - refused0,
                "longest_gap_ms": longest_gap_ms(load.answered, t_kill - 1.0, time.monotonic()),
                "new_router_ms": round((t_new - t_kill) * 1000, 1) if t_new else None,
                "answering_again_ms": round((back - t_kill) * 1000, 1) if back else None,
            })
    return {"workers": load.workers, "pace_s": load.pace, "kills": runs,
            "requests_ok": load.ok, "requests_failed": load.failed, "refused": load.refused,
            "baseline_longest_gap_ms": baseline_gap, "failures": load.failures[:10],
            "failed_total": sum(r["failed"] for r in runs), "refused_total": sum(r["refused"] for r in runs),
            "longest_gap_ms": max((r["longest_gap_ms"] for r in runs), default=None),
            "gap_ratio": round(max(r["longest_gap_ms"] for r in runs) / baseline_gap, 2) if runs and baseline_gap
            else None}


# -- 2. 1,000 connections with a rollback every second -----------------------------------------

def wrk_figures(res: dict[str, Any]) -> dict[str, Any]:
    errors = res["connect"] + res["read"] + res["write"] + res["timeout"]
    return {"requests": res["requests"], "rps": round(res["rps"], 1), "p50_ms": res["p50_us"] / 1000,
            "p99_ms": res["p99_us"] / 1000, "max_ms": res["max_us"] / 1000,
            "errors": {"connect": res["connect"], "read": res["read"], "write": res["write"],
                       "timeout": res["timeout"]},
            "non2xx": res["non2xx"], "failed": errors + max(0, res["non2xx"]), "command": res["command"]}


async def overload(children: Children, workdir: Path, api: AsyncApiClient, port: int, seconds: int,
                   connections: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/"
    c0 = cpu_times()
    base = await run_wrk(children, workdir, url, seconds, connections, count_non2xx=True)
    cpu_base = cpu_use(c0, cpu_times())
    await asyncio.sleep(2.0)
    stop = asyncio.Event()
    switches: list[dict[str, Any]] = []

    async def switcher() -> None:
        await asyncio.sleep(1.0)
        while not stop.is_set():
            t = time.monotonic()
            try:
                r = (await api.post(f"/v1/services/{SERVICE}/rollback"))["rollout"]
                switches.append({"ok": r["phase"] == "succeeded", "ms": round((time.monotonic() - t) * 1000, 1),
                                 "detail": f"{r['id']} {r['phase']}"})
            except ShipyardError as e:
                switches.append({"ok": False, "ms": round((time.monotonic() - t) * 1000, 1), "detail": e.message})
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))

    c0 = cpu_times()
    task = asyncio.create_task(switcher())
    try:
        sw = await run_wrk(children, workdir, url, seconds, connections, count_non2xx=True)
    finally:
        stop.set()
        await task
    cpu_sw = cpu_use(c0, cpu_times())
    b, s = wrk_figures(base), wrk_figures(sw)
    ratio = round(s["p99_ms"] / b["p99_ms"], 2) if b["p99_ms"] else None
    return {"connections": connections, "seconds": seconds, "baseline": b, "switching": s,
            "switches": len(switches), "switch_failures": [x for x in switches if not x["ok"]][:10],
            "switch_ms_max": max((x["ms"] for x in switches), default=None),
            "p99_ratio": ratio, "cpu": {"baseline": cpu_base, "switching": cpu_sw},
            "goal_met": s["failed"] == 0 and ratio is not None and ratio <= P99_RATIO_GOAL}


# -- 3. soak -----------------------------------------------------------------------------------

async def soak_phase(daemon: DaemonProcess, api: AsyncApiClient, state: Path, port: int, specs: list[Path],
                     seconds: float, warmup: float, sample_every: float) -> dict[str, Any]:
    assert daemon.proc is not None
    load = PacedLoad("127.0.0.1", port, workers=8, pace=0.05)
    res = await soak(daemon.proc.pid, state, load, alternating_switcher(api, SERVICE, specs), seconds,
                     switch_every=5.0, sample_every=sample_every)
    return {**res.figures(warmup), "sample_every_s": sample_every, "switch_failure_messages": res.switch_failures[:5],
            "failures": load.failures[:10],
            "series": [[round(s.t, 1), s.daemon_rss_kib, s.daemon_fds, s.router_rss_kib, s.router_fds]
                       for s in res.samples]}


# -- the run -----------------------------------------------------------------------------------

async def run(args: argparse.Namespace, state: Path, children: Children) -> dict[str, Any]:
    port = free_port()
    specs = write_specs(example_dir(), state / "specs", f"127.0.0.1:{port}", delay="1h")
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths, timeout=120)
    out: dict[str, Any] = {}
    try:
        print(f"state dir {state}; deploying shop v1 and v2 on 127.0.0.1:{port} ...", flush=True)
        await deploy(api, specs["v1"])
        await deploy(api, specs["v2"])
        if args.kills > 0:
            print(f"router kill -9 under paced load, {args.kills} kill(s) ...", flush=True)
            out["router_kill"] = await router_kill(state, port, args.kills, args.between)
        if args.overload_seconds > 0:
            print(f"{args.connections} connections, {args.overload_seconds} s without then with a rollback "
                  "every second ...", flush=True)
            out["overload"] = await overload(children, state, api, port, args.overload_seconds, args.connections)
        if args.soak_seconds > 0:
            print(f"soak: {args.soak_seconds:g} s, a switch every 5 s ...", flush=True)
            out["soak"] = await soak_phase(daemon, api, state, port, [specs["v1"], specs["v2"]], args.soak_seconds,
                                           args.soak_warmup, args.sample_every)
        return out
    finally:
        await children.stop_all()
        with contextlib.suppress(ShipyardError):
            await api.request("DELETE", f"/v1/services/{SERVICE}")
        await api.aclose()
        daemon.stop()


def doc_body(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"Measured {res['date']} on main: {m['nproc']} CPUs "
             f"({m['cpu_model']}), cpu probe {m['cpu_probe_ms']} ms, load average {m['loadavg_1min_before']} "
             f"before the run; `benchmarks/faults.py` (JSON in `benchmarks/results/faults.json`).", ""]
    if (k := res.get("router_kill")) is not None:
        lines += [f"**Router kill -9 under paced load** ({k['workers']} workers, one request each per "
                  f"{k['pace_s'] * 1000:g} ms, half on a new connection per request; {len(k['kills'])} kills):", "",
                  "| kill | failed | refused | longest gap without an answer | new router after | answering again after |",
                  "|---|---|---|---|---|---|"]
        for i, r in enumerate(k["kills"], 1):
            lines.append(f"| {i} | {r['failed']} | {r['refused']} | {r['longest_gap_ms']} ms | "
                         f"{r['new_router_ms']} ms | {r['answering_again_ms']} ms |")
        lines += ["", f"Longest gap with no kill, same load: {k['baseline_longest_gap_ms']} ms "
                  f"(ratio of the worst kill: {k['gap_ratio']}).", ""]
    if (o := res.get("overload")) is not None:
        b, s = o["baseline"], o["switching"]
        lines += [f"**{o['connections']} connections for {o['seconds']} s** (wrk, unpaced), without switching and "
                  f"with a rollback every second ({o['switches']} rollbacks, {len(o['switch_failures'])} failed):", "",
                  "| run | requests | failed (errors + non-2xx) | timeouts | p50 | p99 | max |", "|---|---|---|---|---|---|---|"]
        for name, f in (("no switching", b), ("rollback every 1 s", s)):
            lines.append(f"| {name} | {f['requests']} | {f['failed']} | {f['errors']['timeout']} | {f['p50_ms']:.1f} ms | "
                         f"{f['p99_ms']:.1f} ms | {f['max_ms']:.1f} ms |")
        lines += ["", f"p99 switching / p99 baseline: **{o['p99_ratio']}** (goal <= {P99_RATIO_GOAL:g} with 0 failed: "
                  f"{'met' if o['goal_met'] else 'not met'}).", ""]
    if (sk := res.get("soak")) is not None:
        lines += [f"**Soak** ({sk['seconds']:g} s, a switch every 5 s, {sk['switches']} switches, paced load; slopes "
                  f"are least squares over the samples after a {sk['warmup_s']:g} s warm-up):", "",
                  "| process | RSS start -> end | RSS slope | RSS range | fds slope | fds range |", "|---|---|---|---|---|---|",
                  f"| daemon | {sk['daemon_rss_start_kib']} -> {sk['daemon_rss_end_kib']} KiB | "
                  f"{sk['daemon_rss_slope_kib_per_min']} KiB/min | {sk['daemon_rss_range_kib']} KiB | "
                  f"{sk['daemon_fds_slope_per_min']}/min | {sk['daemon_fds_range']} |",
                  f"| router | | {sk['router_rss_slope_kib_per_min']} KiB/min | {sk['router_rss_range_kib']} KiB | "
                  f"{sk['router_fds_slope_per_min']}/min | {sk['router_fds_range']} |", "",
                  f"{sk['requests_ok']} requests answered, {sk['requests_failed']} failed, {sk['refused']} refused.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=3, help="router kills under paced load; 0 skips")
    p.add_argument("--between", type=float, default=3.0, help="seconds of load before, between and after kills")
    p.add_argument("--connections", type=int, default=1000, help="wrk connections of the overload phase")
    p.add_argument("--overload-seconds", type=int, default=60, help="seconds of each wrk run; 0 skips")
    p.add_argument("--soak-seconds", type=float, default=240.0, help="soak duration; 0 skips")
    p.add_argument("--soak-warmup", type=float, default=None, help="seconds before the slopes (default: a third)")
    p.add_argument("--sample-every", type=float, default=10.0, help="soak: seconds between RSS/fd samples")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 kill, 200 connections for 3 s, 30 s soak; JSON to the temp dir")
    p.add_argument("--json", type=Path, default=None, help=f"where the JSON goes (default {RESULTS})")
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the {SECTION} section of {DOC}")
    args = p.parse_args(argv)
    if args.quick:
        args.kills, args.between, args.connections, args.overload_seconds = 1, 1.5, 200, 3
        args.soak_seconds, args.sample_every = 30.0, 3.0
    if args.soak_warmup is None:
        args.soak_warmup = args.soak_seconds / 3
    out = args.json or (Path(tempfile.gettempdir()) / "faults.quick.json" if args.quick else RESULTS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 4 * args.connections + 1024)) if hard != resource.RLIM_INFINITY else 4 * args.connections + 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))   # wrk, the daemon and its router inherit it
    load_before = Path("/proc/loadavg").read_text().split()[0]
    res = run_bounded("syfaults", lambda state, children: run(args, state, children))
    if isinstance(res, int):
        return res
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["machine"] = {**machine(), "loadavg_1min_before": float(load_before)}
    res["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    publish(res, out, doc_body(res), DOC, SECTION if args.write_doc and not args.quick else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
