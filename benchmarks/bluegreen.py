#!/usr/bin/env python3
"""Blue-green switch benchmark: does a switch/rollback under steady keep-alive load fail
any request, how soon after `shipyard rollback` is every new request on the target slot,
and what does the embedded router cost compared with no proxy and with HAProxy?

A real daemon on a temporary state dir deploys the example shop v1 then v2 (both slots
kept warm), wrk drives the router while the CLI (and, as a second series, the API) flips
traffic back and forth, and a small prober records which release answered every request
it sent. The switch phase runs twice: under a steady paced load (the goal's condition) and
under an unpaced load that saturates the machine (a stress figure). A last phase measures
throughput with no switching. Everything started here is stopped at the end, also on
failure or Ctrl-C. Run: .venv/bin/python benchmarks/bluegreen.py"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchtools import (
    HAPROXY,
    Children,
    Prober,
    Switch,
    cpu_times,
    cpu_use,
    machine,
    measure_settle,
    run_bounded,
    run_wrk,
    series,
    start_haproxy,
    switch_api,
    switch_cli,
    switch_rows,
    wait_port,
    write_doc_section,
)

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess, cli_argv
from shipyard.devtools.demo import example_dir, free_port, write_specs
from shipyard.errors import ShipyardError

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
SERVICE = "shop"
GOAL_MS = 50.0
WARMUP = 1.5
"""Seconds of load before the first switch, and kept free at the end of the load."""
IDLE_PROBE_PAUSE = 0.004
"""Pause between a prober connection's requests in the no-wrk series: ~1000 requests/s in
all, so the machine stays nearly idle while the switch moment is still known to ~1 ms."""
STEADY_PROBE_PAUSE = 0.002
"""The same under steady load: the prober is paced like wrk so it does not become the
unpaced part of the load, and still resolves the switch moment to under 1 ms."""
LOAD_CAP_FACTOR = 4
"""wrk stops by itself after this many times --duration if the switches never finish."""
MIN_GAP = 0.25
"""Quiet time after one switch returned before the next may start, so every switch has
a window of its own in which to settle."""


@dataclass(frozen=True)
class Load:
    """The background load of one switch phase."""
    name: str                        # its key in the JSON
    title: str                       # its column in the doc table
    pace_ms: int                     # wrk delay() between a connection's requests; 0: unpaced
    probe_pause: float               # s between a prober connection's requests; 0: back to back
    goal: bool                       # the 50 ms goal is stated under this load


def loads(args: argparse.Namespace) -> list[Load]:
    return [Load("steady", "steady load", args.pace_ms, STEADY_PROBE_PAUSE, True),
            Load("saturating", "saturating load (stress)", 0, 0.0, False)]


# -- phases ----------------------------------------------------------------------------------

async def deploy(api: AsyncApiClient, spec: Path) -> dict[str, Any]:
    r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
    final = await api.wait_rollout(r["id"], timeout=180)
    if final["phase"] != "succeeded":
        raise ShipyardError(f"deploying {spec.name} ended {final['phase']}: {final['reason']}")
    return final


async def switch_phase(args: argparse.Namespace, load: Load, children: Children, api: AsyncApiClient,
                       state: Path, host: str, port: int, version: str) -> dict[str, Any]:
    """wrk + prober on the router while 2*cycles CLI and 2*cycles API switches run, in pairs
    (CLI there and back, API there and back), spread over --duration s. The load lasts at
    least --duration s and until WARMUP s after the last switch, even when the CLI is slow.
    `version` is the one live when the phase starts."""
    n = 4 * args.cycles
    spacing = (args.duration - 2 * WARMUP) / n
    cpu_before = cpu_times()
    prober = Prober(host, port, pause=load.probe_pause)
    prober.start()
    enough = asyncio.Event()
    wrk = asyncio.create_task(run_wrk(children, state, f"http://{host}:{port}/", LOAD_CAP_FACTOR * args.duration,
                                      args.connections, count_non2xx=True, until=enough, pace_ms=load.pace_ms))
    t0 = time.monotonic()
    switches: list[Switch] = []
    try:
        free_at = t0 + WARMUP
        for k in range(n):
            await asyncio.sleep(max(t0 + WARMUP + k * spacing, free_at) - time.monotonic())
            if wrk.done():
                break               # the load ended (cap reached or wrk failed): no switch without it
            version = "1" if version == "2" else "2"
            sw = (await switch_cli(children, state, SERVICE, version) if (k // 2) % 2 == 0
                  else await switch_api(api, SERVICE, version))
            switches.append(sw)
            free_at = time.monotonic() + MIN_GAP
            if not sw.ok:
                break
        await asyncio.sleep(max(t0 + args.duration, time.monotonic() + WARMUP) - time.monotonic())
        enough.set()
        result = await wrk
    finally:
        if not wrk.done():
            wrk.cancel()
        await prober.stop()
    cpu = cpu_use(cpu_before, cpu_times())
    probes = sorted(prober.probes, key=lambda p: p.sent)
    for i, sw in enumerate(switches):
        measure_settle(sw, probes, switches[i + 1].t_cmd if i + 1 < len(switches) else float("inf"))
    starts = [s.t_cmd for s in switches]
    mean_gap = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else 0.0
    return {"load": load, "wrk": result, "switches": switches, "prober": prober, "spacing_s": mean_gap, "cpu": cpu}


async def push_times(api: AsyncApiClient) -> list[float]:
    """Milliseconds the daemon's table push (build, router apply and its read-back) took for each
    traffic switch so far, oldest first: the `seconds` of its traffic.switched events."""
    out: list[float] = []
    since = 0
    while True:
        events = (await api.get(f"/v1/services/{SERVICE}/events?since={since}"))["events"]
        out += [e["data"]["seconds"] * 1000 for e in events
                if e["kind"] == "traffic.switched" and e["data"].get("seconds") is not None]
        if len(events) < 500:        # the store's page
            return out
        since = events[-1]["id"]


def attach_push_times(switches: list[Switch], times: list[float]) -> bool:
    """One traffic.switched per switch, in order: each switch gets its push time (False: the
    counts differ, none is attached)."""
    if len(times) != len(switches):
        return False
    for sw, ms in zip(switches, times, strict=True):
        sw.push_ms = ms
    return True


async def idle_series(children: Children, state: Path, host: str, port: int, version: str,
                      cycles: int) -> tuple[list[Switch], Prober]:
    """CLI switches on a nearly idle machine (a paced prober, no wrk): how much of the loaded
    figure is the CLI process competing for CPU, rather than the CLI and the switch."""
    prober = Prober(host, port, pause=IDLE_PROBE_PAUSE)
    prober.start()
    switches: list[Switch] = []
    try:
        for _ in range(2 * cycles):
            await asyncio.sleep(0.4)
            version = "1" if version == "2" else "2"
            switches.append(await switch_cli(children, state, SERVICE, version))
            if not switches[-1].ok:
                break
        await asyncio.sleep(0.4)
    finally:
        await prober.stop()
    for i, sw in enumerate(switches):
        measure_settle(sw, prober.probes, switches[i + 1].t_cmd if i + 1 < len(switches) else float("inf"))
    return switches, prober


async def throughput_phase(args: argparse.Namespace, children: Children, api: AsyncApiClient, state: Path,
                           listen: str) -> dict[str, Any]:
    status = await api.get(f"/v1/services/{SERVICE}")
    insts = status["slots"][status["live_slot"]]["instances"]
    backends = [f"{i['host']}:{i['port']}" for i in insts]
    secs, conns = args.throughput_seconds, args.connections
    out: dict[str, Any] = {"backends": backends}
    out["router"] = await run_wrk(children, state, f"http://{listen}/", secs, conns)
    out["direct"] = await run_wrk(children, state, f"http://{backends[0]}/", secs, conns)
    out["haproxy"] = None
    if Path(HAPROXY).exists():
        hport = free_port()
        proc = await start_haproxy(children, state, hport, backends, threads=1)
        try:
            await wait_port("127.0.0.1", hport, proc, log=state / "haproxy.log")
            out["haproxy"] = await run_wrk(children, state, f"http://127.0.0.1:{hport}/", secs, conns)
            out["haproxy"]["nbthread"] = 1
        finally:
            await children.stop(proc)
    return out


# -- report ----------------------------------------------------------------------------------

def goal_met(s: dict[str, Any]) -> bool:
    return (s["settle_ms"]["max"] or 1e9) <= GOAL_MS


def phase_summary(sp: dict[str, Any]) -> dict[str, Any]:
    """One switch phase: its load as offered and as achieved, its failures, its two series."""
    load: Load = sp["load"]
    sws: list[Switch] = sp["switches"]
    wrk, prober = sp["wrk"], sp["prober"]
    wrk_failed = sum(wrk[k] for k in ("connect", "read", "write", "timeout")) + max(wrk["non2xx"], wrk["status"])
    cli, api = series([s for s in sws if s.method == "cli"]), series([s for s in sws if s.method == "api"])
    return {
        "title": load.title, "goal_applies": load.goal, "pace_ms": load.pace_ms,
        "offered_rps": wrk["offered_rps"], "achieved_rps": wrk["rps"],
        "duration_s": wrk["duration_us"] / 1e6, "spacing_s": round(sp["spacing_s"], 3), "cpu": sp["cpu"],
        "prober": {"connections": prober.connections, "pause_ms": load.probe_pause * 1000,
                   "achieved_rps": prober.rate(), "requests": len(prober.probes),
                   "failures": prober.failures(), "errors": prober.errors[:20]},
        "failed_requests": wrk_failed + prober.failures(), "requests": wrk["requests"] + len(prober.probes),
        "wrk_failed": wrk_failed, "wrk": wrk,
        "cli": cli, "api": api, "goal_met": {"cli": goal_met(cli), "api": goal_met(api)},
        "switches": switch_rows(sws),
    }


def summarize(args: argparse.Namespace, sps: list[dict[str, Any]], idle: tuple[list[Switch], Prober] | None,
              tp: dict[str, Any] | None) -> dict[str, Any]:
    phases = {sp["load"].name: phase_summary(sp) for sp in sps}
    failed = sum(p["failed_requests"] for p in phases.values()) + (idle[1].failures() if idle else 0)
    sent = sum(p["requests"] for p in phases.values()) + (len(idle[1].probes) if idle else 0)
    if tp is not None:
        r = tp["router"]
        failed += sum(r[k] for k in ("connect", "read", "write", "timeout", "status"))
        sent += r["requests"]
    result: dict[str, Any] = {
        "benchmark": "bluegreen", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {},
        "options": {"duration_s": args.duration, "cycles": args.cycles, "connections": args.connections,
                    "pace_ms": args.pace_ms, "throughput_seconds": args.throughput_seconds,
                    "idle_cycles": args.idle_cycles, "router": args.router},
        "goal_settle_ms": GOAL_MS,
        "cli_command": cli_argv(),       # the launcher, or `python -m shipyard` if it is not installed
        "failed_requests": {"total_through_router": failed, "requests_through_router": sent},
        "phases": phases,
        "cli_without_load": {**series(idle[0]), "prober_failures": idle[1].failures(),
                             "prober_requests": len(idle[1].probes), "prober_rps": idle[1].rate(),
                             "switches_raw": switch_rows(idle[0])} if idle else None,
        "throughput": tp,
    }
    if tp is not None:
        rps = {k: tp[k]["rps"] for k in ("router", "direct", "haproxy") if tp.get(k)}
        result["ratios"] = {"router_over_direct": rps["router"] / rps["direct"],
                            "router_over_haproxy": rps["router"] / rps["haproxy"] if "haproxy" in rps else None}
    idle_s = series(idle[0]) if idle else {"cycles": args.idle_cycles, "old_after_return": 0}
    result["ok"] = (failed == 0 and len(phases) == len(loads(args))
                    and all(p[m]["old_after_return"] == 0 and p[m]["cycles"] >= args.cycles
                            for p in phases.values() for m in ("cli", "api"))
                    and idle_s["old_after_return"] == 0 and idle_s["cycles"] >= args.idle_cycles)
    return result


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def load_cells(p: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, this phase's value, goal) rows that describe a phase's load."""
    offered = (f"<= {p['offered_rps']:,.0f} ({p['pace_ms']} ms pause per connection)" if p["offered_rps"]
               else "unpaced (as fast as answered)")
    pr = p["prober"]
    pace = f"{pr['pause_ms']:g} ms pause" if pr["pause_ms"] else "back to back"
    return [("wrk requests/s offered / achieved", f"{offered} / {p['achieved_rps']:,.0f}", ""),
            (f"prober requests/s ({pr['connections']} connections)", f"{pr['achieved_rps']:,.0f} ({pace})", ""),
            ("wrk latency p50 / p99", f"{p['wrk']['p50_us'] / 1000:.2f} ms / {p['wrk']['p99_us'] / 1000:.2f} ms", ""),
            ("CPU time busy, all CPUs (of it stolen by the hypervisor)",
             f"{p['cpu']['busy']:.0%} ({p['cpu']['steal']:.0%})", ""),
            ("load duration; mean time between switches", f"{p['duration_s']:.1f} s; {p['spacing_s']:.2f} s",
             ">= 20 s")]


def phase_cells(p: dict[str, Any], cycles: int) -> list[tuple[str, str, str]]:
    cli, api = p["cli"], p["api"]
    rows = load_cells(p) + [
        ("failed requests (wrk socket errors + non-2xx + prober failures)",
         f"{p['failed_requests']} of {p['requests']:,}", "0"),
        ("switch/rollback cycles", f"{cli['cycles']} by CLI + {api['cycles']} by API", f">= {cycles} each")]
    for name, s, what in (("cli", cli, "`shipyard rollback shop` started"), ("api", api, "POST .../rollback sent")):
        verdict = (" (met)" if p["goal_met"][name] else " (**not met**)") if p["goal_applies"] else ""
        rows.append((f"{what} -> every new request on the target (p50 / max)",
                     f"{ms(s['settle_ms']['p50'])} / {ms(s['settle_ms']['max'])}{verdict}",
                     f"<= {GOAL_MS:.0f} ms under steady load"))
    rows += [("the daemon's table push in it: build, router apply, read-back (p50 / max, CLI / API)",
              f"{ms(cli['push_ms']['p50'])} / {ms(cli['push_ms']['max'])}; "
              f"{ms(api['push_ms']['p50'])} / {ms(api['push_ms']['max'])}", ""),
             ("CLI process wall time (p50 / max)", f"{ms(cli['wall_ms']['p50'])} / {ms(cli['wall_ms']['max'])}", ""),
             ("API call time (p50 / max)", f"{ms(api['wall_ms']['p50'])} / {ms(api['wall_ms']['max'])}", ""),
             ("switches after whose return the old release answered a request",
              f"{cli['old_after_return']} of {cli['switches']} CLI, {api['old_after_return']} of {api['switches']} API",
              "0")]
    return rows


def markdown(res: dict[str, Any]) -> str:
    """The bluegreen section of docs/benchmarks.md: the run's figures as tables."""
    m, f, o = res["machine"], res["failed_requests"], res["options"]
    phases = list(res["phases"].values())
    lines = [f"Run of {res['date']} on {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, "
             f"Python {m['python']} (1-min load average before the run: {m['loadavg_1min_before']:.2f}; "
             f"CPU probe, a fixed Python loop: {m.get('cpu_probe_ms', 0):.0f} ms, lower is faster). "
             f"Router: `{o.get('router', 'embedded')}`. "
             f"Each switch phase: wrk {o['connections']} keep-alive connections through the router "
             f"plus the prober. Failed requests through the router in all phases: "
             f"{f['total_through_router']} of {f['requests_through_router']:,}.", "",
             "| figure | " + " | ".join(p["title"] for p in phases) + " | goal |",
             "|---|" + "---|" * len(phases) + "---|"]
    columns = [phase_cells(p, o["cycles"]) for p in phases]
    for i, (label, _, goal) in enumerate(columns[0] if columns else []):
        lines.append(f"| {label} | " + " | ".join(c[i][1] for c in columns) + f" | {goal} |")
    idle = res["cli_without_load"]
    if idle:
        verdict = "met" if goal_met(idle) else "**not met**"
        lines += ["", f"No wrk, nearly idle machine (prober only, {idle['prober_rps']:,.0f} requests/s; "
                  f"{idle['switches']} CLI switches): `shipyard rollback shop` started -> every new request on "
                  f"the target {ms(idle['settle_ms']['p50'])} p50 / {ms(idle['settle_ms']['max'])} max "
                  f"({verdict}); CLI wall time p50 {ms(idle['wall_ms']['p50'])}."]
    tp = res["throughput"]
    if tp:
        lines += ["", f"Throughput, no switching: wrk -t2 -c{o['connections']} -d{o['throughput_seconds']}s "
                  "on GET /, unpaced.",
                  "", "| target | requests/s | p50 | p99 | errors | router relative to it |", "|---|---|---|---|---|---|"]
        router = ("shipyard's HAProxy data plane" if o.get("router") == "haproxy" else "shipyard router (1 process)")
        labels = {"router": f"{router} -> 2 instances", "direct": "one instance directly",
                  "haproxy": "HAProxy (nbthread 1) -> the same 2 instances"}
        for k, label in labels.items():
            r = tp.get(k)
            if not r:
                lines.append(f"| {label} | not installed | | | | |")
                continue
            errs = sum(r[e] for e in ("connect", "read", "write", "timeout", "status"))
            rel = "1.00" if k == "router" else f"{tp['router']['rps'] / r['rps']:.2f}"
            lines.append(f"| {label} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms "
                         f"| {errs} | {rel} |")
    return "\n".join(lines)


def print_human(res: dict[str, Any]) -> None:
    print("\n" + markdown(res) + "\n")
    tagged = [(s, name) for name, p in res["phases"].items() for s in p["switches"]]
    tagged += [(s, "no wrk") for s in (res["cli_without_load"] or {}).get("switches_raw", [])]
    for s, tag in tagged:
        print(f"  {tag:10} {s['method']} -> v{s['target']}: {'ok' if s['ok'] else 'FAILED'}  "
              f"settle {ms(s['settle_ms'])}  last old {ms(s['last_old_ms'])}  wall {ms(s['wall_ms'])}  "
              f"({s['probes']} probes)" + ("" if s["ok"] else f"  {s['detail']}"))
    print("\nresult:", "PASS" if res["ok"] else
          "FAIL (a failed request, an old-release answer after a command returned, or too few cycles)")


# -- main ------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, state: Path, children: Children) -> dict[str, Any]:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    specs = write_specs(example_dir(), state / "specs", listen, delay="1h", router=args.router)
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths, timeout=120)
    try:
        print(f"state dir {state}; deploying shop v1 and v2 on {listen} ...", flush=True)
        await deploy(api, specs["v1"])
        await deploy(api, specs["v2"])
        pushes_before = len(await push_times(api))
        sps: list[dict[str, Any]] = []
        version = "2"
        for load in loads(args):
            if sps and not (sps[-1]["switches"] and all(s.ok for s in sps[-1]["switches"])):
                break               # a switch failed: the report says so; no more switching on top
            pace = f"{load.pace_ms} ms pause per connection" if load.pace_ms else "unpaced"
            print(f"switch phase, {load.title}: {args.duration} s, {args.connections} connections ({pace}), "
                  f"{args.cycles} CLI + {args.cycles} API cycles ...", flush=True)
            sps.append(await switch_phase(args, load, children, api, state, "127.0.0.1", port, version))
            version = sps[-1]["switches"][-1].target if sps[-1]["switches"] else version
        idle: tuple[list[Switch], Prober] | None = None
        if args.idle_cycles > 0 and all(sp["switches"] and all(s.ok for s in sp["switches"]) for sp in sps):
            print(f"CLI on a nearly idle machine: {args.idle_cycles} cycles ...", flush=True)
            idle = await idle_series(children, state, "127.0.0.1", port, version, args.idle_cycles)
        everything = [s for sp in sps for s in sp["switches"]] + (idle[0] if idle else [])
        if not attach_push_times(everything, (await push_times(api))[pushes_before:]):
            print("  (the daemon's push times do not match the switches one to one: not reported)", flush=True)
        tp = None
        if args.throughput_seconds > 0:
            print(f"throughput phase: {args.throughput_seconds} s each for router, direct, haproxy ...", flush=True)
            tp = await throughput_phase(args, children, api, state, listen)
        return summarize(args, sps, idle, tp)
    finally:
        await children.stop_all()
        with contextlib.suppress(ShipyardError):
            await api.request("DELETE", f"/v1/services/{SERVICE}")
        await api.aclose()
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=24, help="seconds of load in each switch phase")
    p.add_argument("--cycles", type=int, default=10, help="switch/rollback cycles by CLI (and as many by API)")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--pace-ms", type=int, default=5,
                   help="steady load: pause of each wrk connection between a response and its next request")
    p.add_argument("--throughput-seconds", type=int, default=10, help="wrk seconds per throughput target; 0 skips")
    p.add_argument("--idle-cycles", type=int, default=2,
                   help="extra CLI cycles with only the prober running (no wrk); 0 skips")
    p.add_argument("--router", choices=("embedded", "haproxy"), default="embedded",
                   help="the service's router.kind: the data plane switched (results and doc section per router)")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON results (default: results/bluegreen.json, or bluegreen-haproxy.json)")
    p.add_argument("--write-doc", action="store_true",
                   help=f"rewrite the bluegreen (or bluegreen-haproxy) section of {DOC}")
    args = p.parse_args(argv)
    suffix = "" if args.router == "embedded" else f"-{args.router}"
    args.output = args.output or HERE / "results" / f"bluegreen{suffix}.json"
    if args.duration < 20 or args.cycles < 1 or args.connections < 1 or args.pace_ms < 1:
        p.error("the acceptance needs --duration >= 20, --cycles >= 1, --connections >= 1 and --pace-ms >= 1")
    load_before = Path("/proc/loadavg").read_text().split()[0]   # another load on the machine skews everything
    res = run_bounded("sybench", lambda state, children: run(args, state, children))
    if isinstance(res, int):
        return res
    res["machine"] = {**machine(), "loadavg_1min_before": float(load_before)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n")
    print_human(res)
    print(f"JSON: {args.output}")
    if args.write_doc:
        write_doc_section(DOC, f"bluegreen{suffix}", markdown(res))
        print(f"doc: {DOC}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
