#!/usr/bin/env python3
"""Blue-green switch benchmark: does a switch/rollback under steady keep-alive load fail
any request, how soon after `shipyard rollback` is every new request on the target slot,
and what does the embedded router cost compared with no proxy and with HAProxy?

A real daemon on a temporary state dir deploys the example shop v1 then v2 (both slots
kept warm), wrk drives the router while the CLI (and, as a second series, the API) flips
traffic back and forth, and a small prober records which release answered every request
it sent. A second phase measures throughput with no switching. Everything started here is
stopped at the end, also on failure or Ctrl-C. Run: .venv/bin/python benchmarks/bluegreen.py"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchtools import (
    HAPROXY,
    Children,
    Probe,
    Prober,
    kill_everything_under,
    machine,
    run_wrk,
    start_haproxy,
    wait_port,
    write_doc_section,
)

from shipyard.client import AsyncApiClient
from shipyard.daemonproc import DaemonProcess
from shipyard.demo import example_dir, free_port, write_specs
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
LOAD_CAP_FACTOR = 4
"""wrk stops by itself after this many times --duration if the switches never finish."""
MIN_GAP = 0.25
"""Quiet time after one switch returned before the next may start, so every switch has
a window of its own in which to settle."""


# -- switches --------------------------------------------------------------------------------

@dataclass
class Switch:
    method: str                      # "cli" | "api"
    target: str                      # the version that must serve afterwards
    t_cmd: float                     # monotonic, just before the CLI process / API request started
    t_done: float = 0.0              # when the CLI process exited / the API call returned
    ok: bool = False
    detail: str = ""
    settle_ms: float | None = None   # t_cmd -> send time of the first target answer after the last old one
    last_old_ms: float | None = None  # t_cmd -> send time of the last answer by the old release
    probes: int = 0                  # prober answers sent in this switch's window

    @property
    def wall_ms(self) -> float:
        return (self.t_done - self.t_cmd) * 1000


def cli_argv() -> list[str]:
    script = Path(sys.executable).with_name("shipyard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shipyard"]


async def switch_cli(children: Children, state: Path, target: str) -> Switch:
    env = {**os.environ, "SHIPYARD_HOME": str(state)}
    sw = Switch("cli", target, time.monotonic())
    proc = await children.spawn([*cli_argv(), "rollback", SERVICE], env=env, cwd=state,
                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    sw.t_done = time.monotonic()
    sw.detail = out.decode(errors="replace").strip()
    sw.ok = proc.returncode == 0 and "succeeded" in sw.detail
    return sw


async def switch_api(api: AsyncApiClient, target: str) -> Switch:
    sw = Switch("api", target, time.monotonic())
    try:
        r = (await api.post(f"/v1/services/{SERVICE}/rollback"))["rollout"]
        sw.ok, sw.detail = r["phase"] == "succeeded", f"{r['kind']} {r['id']}: {r['phase']}"
    except ShipyardError as e:
        sw.detail = e.message
    sw.t_done = time.monotonic()
    return sw


def measure_settle(sw: Switch, probes: list[Probe], until: float) -> None:
    """Fill in when, within [t_cmd, until), every request sent was answered by the target."""
    window = [p for p in probes if sw.t_cmd <= p.sent < until and p.status]
    sw.probes = len(window)
    last_old = max((p.sent for p in window if p.version != sw.target), default=None)
    after = [p.sent for p in window if p.version == sw.target and (last_old is None or p.sent > last_old)]
    sw.last_old_ms = (last_old - sw.t_cmd) * 1000 if last_old is not None else None
    sw.settle_ms = (min(after) - sw.t_cmd) * 1000 if after else None


# -- phases ----------------------------------------------------------------------------------

async def deploy(api: AsyncApiClient, spec: Path) -> dict[str, Any]:
    r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
    final = await api.wait_rollout(r["id"], timeout=180)
    if final["phase"] != "succeeded":
        raise ShipyardError(f"deploying {spec.name} ended {final['phase']}: {final['reason']}")
    return final


async def switch_phase(args: argparse.Namespace, children: Children, api: AsyncApiClient, state: Path,
                       host: str, port: int) -> dict[str, Any]:
    """wrk + prober on the router while 2*cycles CLI and 2*cycles API switches run, in pairs
    (CLI there and back, API there and back), spread over --duration s. The load lasts at
    least --duration s and until WARMUP s after the last switch, even when the CLI is slow."""
    n = 4 * args.cycles
    spacing = (args.duration - 2 * WARMUP) / n
    prober = Prober(host, port)
    prober.start()
    enough = asyncio.Event()
    wrk = asyncio.create_task(run_wrk(children, state, f"http://{host}:{port}/", LOAD_CAP_FACTOR * args.duration,
                                      args.connections, count_non2xx=True, until=enough))
    t0 = time.monotonic()
    switches: list[Switch] = []
    version = "2"
    try:
        free_at = t0 + WARMUP
        for k in range(n):
            await asyncio.sleep(max(t0 + WARMUP + k * spacing, free_at) - time.monotonic())
            if wrk.done():
                break               # the load ended (cap reached or wrk failed): no switch without it
            version = "1" if version == "2" else "2"
            sw = (await switch_cli(children, state, version) if (k // 2) % 2 == 0
                  else await switch_api(api, version))
            switches.append(sw)
            free_at = time.monotonic() + MIN_GAP
            if not sw.ok:
                break
        await asyncio.sleep(max(t0 + args.duration, time.monotonic() + WARMUP) - time.monotonic())
        enough.set()
        load = await wrk
    finally:
        if not wrk.done():
            wrk.cancel()
        await prober.stop()
    probes = sorted(prober.probes, key=lambda p: p.sent)
    for i, sw in enumerate(switches):
        measure_settle(sw, probes, switches[i + 1].t_cmd if i + 1 < len(switches) else float("inf"))
    starts = [s.t_cmd for s in switches]
    mean_gap = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else 0.0
    return {"wrk": load, "switches": switches, "prober": prober, "spacing_s": mean_gap}


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
            switches.append(await switch_cli(children, state, version))
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

def stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": statistics.median(values) if values else None, "max": max(values) if values else None,
            "n": len(values)}


def series(switches: list[Switch]) -> dict[str, Any]:
    """p50/max of one series; a cycle counts when both its switches succeeded and settled."""
    good = [s for s in switches if s.ok and s.settle_ms is not None]
    cycles = sum(1 for i in range(0, len(switches) - 1, 2) if switches[i] in good and switches[i + 1] in good)
    return {"switches": len(switches), "settled": len(good), "cycles": cycles,
            "settle_ms": stats([s.settle_ms for s in good if s.settle_ms is not None]),
            "wall_ms": stats([s.wall_ms for s in switches]),
            "old_after_return": sum(1 for s in switches if s.last_old_ms is not None and s.last_old_ms > s.wall_ms)}


def switch_rows(switches: list[Switch]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in asdict(s).items() if k not in ("t_cmd", "t_done")}, "wall_ms": s.wall_ms}
            for s in switches]


def summarize(args: argparse.Namespace, sp: dict[str, Any], idle: tuple[list[Switch], Prober] | None,
              tp: dict[str, Any] | None) -> dict[str, Any]:
    sws: list[Switch] = sp["switches"]
    wrk, prober = sp["wrk"], sp["prober"]
    wrk_failed = sum(wrk[k] for k in ("connect", "read", "write", "timeout")) + max(wrk["non2xx"], wrk["status"])
    router_failed = wrk_failed + prober.failures() + (idle[1].failures() if idle else 0)
    if tp is not None:
        r = tp["router"]
        router_failed += sum(r[k] for k in ("connect", "read", "write", "timeout", "status"))
    cli, api = series([s for s in sws if s.method == "cli"]), series([s for s in sws if s.method == "api"])
    sent = (wrk["requests"] + len(prober.probes) + (len(idle[1].probes) if idle else 0)
            + (tp["router"]["requests"] if tp else 0))
    result: dict[str, Any] = {
        "benchmark": "bluegreen", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {},
        "options": {"duration_s": args.duration, "cycles": args.cycles, "connections": args.connections,
                    "throughput_seconds": args.throughput_seconds, "spacing_s": round(sp["spacing_s"], 3),
                    "prober_connections": prober.connections},
        "goal_settle_ms": GOAL_MS,
        "failed_requests": {"total_through_router": router_failed, "requests_through_router": sent,
                            "switch_wrk": wrk_failed, "prober": prober.failures(),
                            "prober_errors": prober.errors[:20]},
        "switch_load": wrk, "prober_requests": len(prober.probes),
        "cli": cli, "api": api,
        "goal_met": {"cli": (cli["settle_ms"]["max"] or 1e9) <= GOAL_MS,
                     "api": (api["settle_ms"]["max"] or 1e9) <= GOAL_MS},
        "switches": switch_rows(sws),
        "cli_without_load": {**series(idle[0]), "prober_failures": idle[1].failures(),
                             "prober_requests": len(idle[1].probes),
                             "switches_raw": switch_rows(idle[0])} if idle else None,
        "throughput": tp,
    }
    if tp is not None:
        rps = {k: tp[k]["rps"] for k in ("router", "direct", "haproxy") if tp.get(k)}
        result["ratios"] = {"router_over_direct": rps["router"] / rps["direct"],
                            "router_over_haproxy": rps["router"] / rps["haproxy"] if "haproxy" in rps else None}
    idle_s = series(idle[0]) if idle else {"cycles": args.idle_cycles, "old_after_return": 0}
    result["ok"] = (router_failed == 0
                    and cli["old_after_return"] == api["old_after_return"] == idle_s["old_after_return"] == 0
                    and cli["cycles"] >= args.cycles and api["cycles"] >= args.cycles
                    and idle_s["cycles"] >= args.idle_cycles)
    return result


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def markdown(res: dict[str, Any]) -> str:
    """The bluegreen section of docs/benchmarks.md: the run's figures as tables."""
    m, cli, api, f = res["machine"], res["cli"], res["api"], res["failed_requests"]
    o = res["options"]
    lines = [
        f"Run of {res['date']} on {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']} "
        f"(1-min load average before the run: {m['loadavg_1min_before']:.2f}). "
        f"Load: wrk {o['connections']} keep-alive connections through the router for "
        f"{res['switch_load']['duration_us'] / 1e6:.1f} s, plus a {o['prober_connections']}-connection prober; "
        f"a switch every {o['spacing_s']:.2f} s on average.",
        "",
        "| figure | result | goal |",
        "|---|---|---|",
        f"| failed requests through the router (wrk socket errors + non-2xx + prober failures) | "
        f"{f['total_through_router']} of {f['requests_through_router']:,} | 0 |",
        f"| switch/rollback cycles under load | {cli['cycles']} by CLI + {api['cycles']} by API "
        f"({cli['switches'] + api['switches']} switches) | >= {o['cycles']} |",
    ]
    for name, s, what in (("CLI", cli, "`shipyard rollback shop` started"), ("API", api, "POST .../rollback sent")):
        goal = "met" if res["goal_met"][name.lower()] else "**not met**"
        lines.append(f"| {what} -> every new request on the target (p50 / max) | "
                     f"{ms(s['settle_ms']['p50'])} / {ms(s['settle_ms']['max'])} | <= {GOAL_MS:.0f} ms ({goal}) |")
    lines += [f"| CLI process wall time (p50 / max) | {ms(cli['wall_ms']['p50'])} / {ms(cli['wall_ms']['max'])} | |",
              f"| API call time (p50 / max) | {ms(api['wall_ms']['p50'])} / {ms(api['wall_ms']['max'])} | |",
              f"| requests sent after the command returned that the old release answered | "
              f"in {cli['old_after_return']} of {cli['switches']} CLI switches, in {api['old_after_return']} "
              f"of {api['switches']} API switches | 0 |"]
    idle = res["cli_without_load"]
    if idle:
        goal = "met" if (idle["settle_ms"]["max"] or 1e9) <= GOAL_MS else "**not met**"
        lines.append(f"| no wrk, nearly idle machine ({idle['switches']} CLI switches): CLI started -> every new "
                     f"request on the target (p50 / max); CLI wall p50 | {ms(idle['settle_ms']['p50'])} / "
                     f"{ms(idle['settle_ms']['max'])}; {ms(idle['wall_ms']['p50'])} | <= {GOAL_MS:.0f} ms ({goal}) |")
    tp = res["throughput"]
    if tp:
        lines += ["", f"Throughput, no switching: wrk -t2 -c{o['connections']} -d{o['throughput_seconds']}s on GET /.",
                  "", "| target | requests/s | p50 | p99 | errors | router relative to it |", "|---|---|---|---|---|---|"]
        labels = {"router": "shipyard router (1 process) -> 2 instances", "direct": "one instance directly",
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
    loaded = [(s, "") for s in res["switches"]]
    for s, tag in loaded + [(s, " (no wrk)") for s in (res["cli_without_load"] or {}).get("switches_raw", [])]:
        print(f"  {s['method']}{tag} -> v{s['target']}: {'ok' if s['ok'] else 'FAILED'}  settle {ms(s['settle_ms'])}  "
              f"last old {ms(s['last_old_ms'])}  wall {ms(s['wall_ms'])}  ({s['probes']} probes)"
              + ("" if s["ok"] else f"  {s['detail']}"))
    print("\nresult:", "PASS" if res["ok"] else
          "FAIL (a failed request, an old-release answer after a command returned, or too few cycles)")


# -- main ------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, state: Path, children: Children) -> dict[str, Any]:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    specs = write_specs(example_dir(), state / "specs", listen, delay="1h")
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths, timeout=120)
    try:
        print(f"state dir {state}; deploying shop v1 and v2 on {listen} ...", flush=True)
        await deploy(api, specs["v1"])
        await deploy(api, specs["v2"])
        print(f"switch phase: {args.duration} s, {args.connections} connections, "
              f"{args.cycles} CLI + {args.cycles} API cycles ...", flush=True)
        sp = await switch_phase(args, children, api, state, "127.0.0.1", port)
        idle: tuple[list[Switch], Prober] | None = None
        if args.idle_cycles > 0 and sp["switches"] and all(s.ok for s in sp["switches"]):
            print(f"CLI on a nearly idle machine: {args.idle_cycles} cycles ...", flush=True)
            idle = await idle_series(children, state, "127.0.0.1", port, sp["switches"][-1].target,
                                     args.idle_cycles)
        tp = None
        if args.throughput_seconds > 0:
            print(f"throughput phase: {args.throughput_seconds} s each for router, direct, haproxy ...", flush=True)
            tp = await throughput_phase(args, children, api, state, listen)
        return summarize(args, sp, idle, tp)
    finally:
        await children.stop_all()
        with contextlib.suppress(ShipyardError):
            await api.request("DELETE", f"/v1/services/{SERVICE}")
        await api.aclose()
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=24, help="seconds of load in the switch phase")
    p.add_argument("--cycles", type=int, default=10, help="switch/rollback cycles by CLI (and as many by API)")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--throughput-seconds", type=int, default=10, help="wrk seconds per throughput target; 0 skips")
    p.add_argument("--idle-cycles", type=int, default=2,
                   help="extra CLI cycles with only the prober running (no wrk); 0 skips")
    p.add_argument("--output", type=Path, default=HERE / "results" / "bluegreen.json")
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the bluegreen section of {DOC}")
    args = p.parse_args(argv)
    if args.duration < 20 or args.cycles < 1 or args.connections < 1:
        p.error("the acceptance needs --duration >= 20, --cycles >= 1 and --connections >= 1")
    load_before = Path("/proc/loadavg").read_text().split()[0]   # another load on the machine skews everything
    state = Path(tempfile.mkdtemp(prefix="sybench"))
    children = Children()
    try:
        res = asyncio.run(run(args, state, children))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except ShipyardError as e:
        print(f"benchmark failed: {e.message}" + (f"\n  {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    finally:
        kill_everything_under(state)
        shutil.rmtree(state, ignore_errors=True)
    res["machine"] = {**machine(), "loadavg_1min_before": float(load_before)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n")
    print_human(res)
    print(f"JSON: {args.output}")
    if args.write_doc:
        write_doc_section(DOC, "bluegreen", markdown(res))
        print(f"doc: {DOC}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
