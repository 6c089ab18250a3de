#!/usr/bin/env python3
"""Router speed benchmark (issue 14): what one request costs the embedded router, next to
no proxy at all and to a plain HAProxy, on the same near-free backend.

The backend is N HAProxy processes (`nbthread 1`) that answer a fixed 200 themselves
(`http-request return`), so nearly all the CPU a proxied request costs is the proxy's.
In front of them, one after the other and in alternating rounds (a shared VM drifts):
  - direct: wrk straight to instance 0 (no hop);
  - embedded: the real router process (`python -m shipyard.router.dataplane.proxy`),
    driven over its control socket with a table, as the daemon does;
  - embedded-2: `router.workers: 2`, started and given the table by the daemon's own
    EmbeddedRouter; its CPU per request is summed over both workers, which may use both
    CPUs (so they share them with wrk and the backends: requests/s is what 2 CPUs give);
  - haproxy: a plain HAProxy `nbthread 1` proxy (keep-alive both sides, round robin);
  - shipyard-haproxy: shipyard's HAProxy data plane (router.kind haproxy: maps, per-request
    log lines) driven through the Router port with the same table.

wrk drives 64 keep-alive connections for a fixed duration. For each proxy the CPU time of
its process (utime + stime from /proc/PID/stat, before and after) divided by the requests
it relayed is its cost per request; embedded vs HAProxy "per core" is the inverse ratio of
those costs (issue 14's goal: >= 0.8). With two CPUs or more the proxy under test runs
alone on one CPU and wrk with the backends on another (sched_setaffinity), so the load
generator does not steal the proxy's core.
Every process it starts is stopped at the end, also on failure or Ctrl-C.
Run: .venv/bin/python benchmarks/router.py [--quick] [--json PATH] [--write-doc]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchtools import (
    HAPROXY,
    WRK,
    Children,
    loadavg_now,
    machine,
    publish,
    run_bounded,
    run_wrk,
    start_haproxy,
    tools_missing,
    wait_port,
)
from router_workers import spread, start_embedded_workers, stop_embedded_workers, worker_split

from shipyard.devtools.demo import free_port
from shipyard.errors import ShipyardError
from shipyard.router.control_client import RouterControlClient
from shipyard.router.table import RoutingTable, Upstream

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
RESULTS = HERE / "results" / "router.json"
SECTION = "router"
SERVICE = "bench"
GOAL_PER_CORE = 0.8
GOAL_HAPROXY_COST = 1.05
"""Issue 14: the HAProxy data plane within 5 % of plain HAProxy."""
TICK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "embedded", "embedded-2", "haproxy", "shipyard-haproxy")
LABELS = {"direct": "direct to one instance (no proxy)",
          "embedded": "embedded router (one process)",
          "embedded-2": "embedded router, 2 workers (`router.workers: 2`, both CPUs)",
          "haproxy": "plain HAProxy, `nbthread 1`",
          "shipyard-haproxy": "shipyard's HAProxy data plane (`router.kind: haproxy`)"}


@dataclass
class Target:
    """Something wrk can be pointed at; `pid` is the proxy process whose CPU is measured
    (None for direct: the backend's own CPU is reported instead)."""
    name: str
    port: int
    pid: int | None
    more_pids: tuple[int, ...] = ()
    """Further processes of the same proxy (router workers): their CPU is added to `pid`'s."""


# -- CPU placement and accounting ------------------------------------------------------------

def cpus() -> tuple[int | None, int | None]:
    """(proxy CPU, load CPU): the first and last CPU this process may use; (None, None) on one CPU."""
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[-1]) if len(mine) >= 2 else (None, None)


def pin(pid: int, cpu: int | None) -> None:
    """Every thread of `pid` onto `cpu` (no-op without a CPU to give it)."""
    if cpu is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of `pid` so far, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks_of(pids: tuple[int, ...]) -> tuple[int, int]:
    """(utime, stime) summed over `pids`."""
    ticks = [cpu_ticks(p) for p in pids]
    return sum(t[0] for t in ticks), sum(t[1] for t in ticks)


def cpu_busy() -> dict[int, tuple[int, int]]:
    """Per CPU, (busy, total) ticks so far, from /proc/stat (idle and iowait are not busy)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


# -- the processes ---------------------------------------------------------------------------

async def start_backend(children: Children, workdir: Path, i: int) -> tuple[int, int]:
    """Instance i: a HAProxy that answers 200 "ok" itself; (port, pid)."""
    port = free_port()
    cfg = workdir / f"backend{i}.cfg"
    cfg.write_text(f"""global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend instance
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "ok"
""")
    log = workdir / f"backend{i}.log"
    with open(log, "wb") as f:
        proc = await children.spawn([HAPROXY, "-f", str(cfg), "-db"], cwd=workdir, stdout=f,
                                    stderr=asyncio.subprocess.STDOUT)
    await wait_port("127.0.0.1", port, proc, log=log)
    return port, proc.pid


async def start_embedded(children: Children, workdir: Path, backends: list[int]) -> Target:
    """The router process as the daemon runs it, given a one-track table over its control socket."""
    port = free_port()
    sock, table_path, log = workdir / "router.sock", workdir / "router.table.json", workdir / "router.log"
    argv = [sys.executable, "-m", "shipyard.router.dataplane.proxy", "--service", SERVICE, "--listen",
            f"127.0.0.1:{port}", "--control", str(sock), "--table", str(table_path)]
    with open(log, "wb") as f:
        proc = await children.spawn(argv, cwd=workdir, stdout=f, stderr=asyncio.subprocess.STDOUT)
    client = RouterControlClient(sock, 1.0)
    deadline = time.monotonic() + 10
    while True:
        if proc.returncode is not None:
            raise ShipyardError(f"the router exited ({proc.returncode}):\n{log.read_text()[-1500:]}")
        try:
            await client.ping()
            break
        except ShipyardError:
            if time.monotonic() > deadline:
                raise ShipyardError(f"the router did not answer on {sock}:\n{log.read_text()[-1500:]}") from None
            await asyncio.sleep(0.05)
    await client.set_table(bench_table(backends))
    return Target("embedded", port, proc.pid)


async def start_workers(backends: list[int]) -> Target:
    """`router.workers: 2` through the daemon's EmbeddedRouter (router_workers.py)."""
    port, pids = await start_embedded_workers(bench_table(backends), SERVICE)
    return Target("embedded-2", port, pids[0], tuple(pids[1:]))


async def start_plain_haproxy(children: Children, workdir: Path, backends: list[int]) -> Target:
    port = free_port()
    proc = await start_haproxy(children, workdir, port, [f"127.0.0.1:{p}" for p in backends], threads=1)
    await wait_port("127.0.0.1", port, proc, log=workdir / "haproxy.log")
    return Target("haproxy", port, proc.pid)


def bench_table(backends: list[int]) -> RoutingTable:
    """The table the daemon builds for a blue-green service with one live slot (rollout/traffic.py)."""
    return RoutingTable(SERVICE, 1, {"blue": tuple(Upstream(f"i{i}", "127.0.0.1", p) for i, p in enumerate(backends))},
                        {"blue": 100.0}, aliases={"stable": "blue"}, releases={"blue": "bench"},
                        preview_token="bench-preview-token")


def shipyard_haproxy_available() -> bool:
    return importlib.util.find_spec("shipyard.router.haproxy") is not None


async def start_shipyard_haproxy(children: Children, workdir: Path, backends: list[int]) -> Target | None:
    """The 4th column: shipyard's HAProxy data plane (`router.kind: haproxy`, router/haproxy/) in
    front of `backends`, given the same one-track table as the embedded router through the
    Router port, as the daemon does; its pid is the HAProxy worker that relays the requests.
    Its traffic log is read by this process (as the daemon would), so the worker's CPU figure
    includes writing every log line. Stopped by `stop_shipyard_haproxy`."""
    if not shipyard_haproxy_available():
        return None
    from shipyard.router.haproxy.adapter import HAProxyRouter
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="syhap"))   # short: unix socket paths are ~100 bytes at most
    router = HAProxyRouter(root)
    _SHIPYARD_HAPROXY.append((router, root))
    await router.ensure(SERVICE, f"127.0.0.1:{port}", "haproxy")
    await router.apply(bench_table(backends))
    worker = router.proc.worker_pid
    if worker is None:
        raise ShipyardError("shipyard's HAProxy started without a worker answering its admin socket")
    return Target("shipyard-haproxy", port, worker)


_SHIPYARD_HAPROXY: list[Any] = []


async def stop_shipyard_haproxy() -> None:
    while _SHIPYARD_HAPROXY:
        router, root = _SHIPYARD_HAPROXY.pop()
        try:
            await router.stop(SERVICE)
        finally:
            shutil.rmtree(root, ignore_errors=True)


# -- measuring -------------------------------------------------------------------------------

async def measure(children: Children, workdir: Path, t: Target, seconds: int, warmup: int, connections: int,
                  backend_pids: list[int]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{t.port}/"
    if warmup:
        await run_wrk(children, workdir, url, warmup, connections, threads=1)
    watched = {"proxy": (t.pid, *t.more_pids)} if t.pid is not None else {}
    watched.update({f"backend{i}": (p,) for i, p in enumerate(backend_pids)})
    before, busy0 = {k: cpu_ticks_of(p) for k, p in watched.items()}, cpu_busy()
    res = await run_wrk(children, workdir, url, seconds, connections, threads=1, count_non2xx=True)
    after, busy1 = {k: cpu_ticks_of(p) for k, p in watched.items()}, cpu_busy()
    busy = {c: round((busy1[c][0] - busy0[c][0]) / max(1, busy1[c][1] - busy0[c][1]), 3) for c in busy1 if c in busy0}
    n = res["requests"] or 1

    def per_request(k: str, i: int | None = None) -> float:
        ticks = sum(after[k]) - sum(before[k]) if i is None else after[k][i] - before[k][i]
        return round(ticks / TICK * 1e6 / n, 2)

    us = {k: per_request(k) for k in watched}
    failed = res["connect"] + res["read"] + res["write"] + res["timeout"] + max(0, res["non2xx"])
    return {"requests": res["requests"], "rps": round(res["rps"], 1), "p50_ms": res["p50_us"] / 1000,
            "p99_ms": res["p99_us"] / 1000, "failed": failed, "cpu_us_per_request": us,
            "proxy_user_sys_us": [per_request("proxy", 0), per_request("proxy", 1)] if "proxy" in watched else None,
            "proxy_cpu_s": round((sum(after["proxy"]) - sum(before["proxy"])) / TICK, 2) if "proxy" in watched else None,
            "cpu_busy": busy, "command": res["command"]}


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one target (each round is one wrk run)."""
    def med(f: Any) -> float | None:
        vals = [f(r) for r in rounds if f(r) is not None]
        return round(statistics.median(vals), 2) if vals else None
    return {"rps": med(lambda r: r["rps"]), "p50_ms": med(lambda r: r["p50_ms"]),
            "p99_ms": med(lambda r: r["p99_ms"]), "failed": sum(r["failed"] for r in rounds),
            "proxy_us_per_request": med(lambda r: r["cpu_us_per_request"].get("proxy")),
            "proxy_user_us": med(lambda r: r["proxy_user_sys_us"][0] if r["proxy_user_sys_us"] else None),
            "proxy_sys_us": med(lambda r: r["proxy_user_sys_us"][1] if r["proxy_user_sys_us"] else None),
            "backend_us_per_request": med(lambda r: sum(v for k, v in r["cpu_us_per_request"].items()
                                                        if k.startswith("backend"))),
            "cpu_busy": {c: med(lambda r, c=c: r["cpu_busy"].get(c)) for c in rounds[0]["cpu_busy"]},
            "rounds": len(rounds)}


async def run(args: argparse.Namespace, workdir: Path, children: Children) -> dict[str, Any]:
    proxy_cpu, load_cpu = cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # wrk and the backends inherit the load CPU
    try:
        backends = [await start_backend(children, workdir, i) for i in range(args.instances)]
        ports, pids = [p for p, _ in backends], [pid for _, pid in backends]
        targets: dict[str, Target | None] = {
            "direct": Target("direct", ports[0], None),
            "embedded": await start_embedded(children, workdir, ports),
            "embedded-2": await start_workers(ports),
            "haproxy": await start_plain_haproxy(children, workdir, ports),
            "shipyard-haproxy": await start_shipyard_haproxy(children, workdir, ports),
        }
        for t in targets.values():
            if t is not None and t.pid is not None:
                if t.more_pids:
                    for pid in (t.pid, *t.more_pids):
                        spread(pid, {proxy_cpu, load_cpu})
                else:
                    pin(t.pid, proxy_cpu)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k, t in targets.items() if t is not None}
        for r in range(args.rounds):
            for name, t in targets.items():
                if t is None:
                    continue
                print(f"round {r + 1}/{args.rounds}: {name} ...", flush=True)
                if name == "direct":  # the instance gets the proxy's CPU: the best it can do alone
                    pin(pids[0], proxy_cpu)
                try:
                    runs[name].append(await measure(children, workdir, t, args.seconds, args.warmup,
                                                    args.connections, pids[:1] if name == "direct" else pids))
                finally:
                    if name == "direct":
                        pin(pids[0], load_cpu)
        split = await worker_split()
    finally:
        await stop_shipyard_haproxy()
        await stop_embedded_workers()
        if load_cpu is not None:
            os.sched_setaffinity(0, {proxy_cpu, load_cpu} | os.sched_getaffinity(0))
    figures = {k: summary(v) for k, v in runs.items()}
    emb, hap = figures["embedded"]["proxy_us_per_request"], figures["haproxy"]["proxy_us_per_request"]
    ratio = round(hap / emb, 3) if emb and hap else None
    out: dict[str, Any] = {
        "targets": figures, "runs": runs, "instances": args.instances, "connections": args.connections,
        "seconds": args.seconds, "rounds": args.rounds, "pinning": {"proxy_cpu": proxy_cpu, "load_cpu": load_cpu},
        "embedded_over_haproxy_per_core": ratio, "goal_per_core": GOAL_PER_CORE,
        "embedded_2_requests_per_worker": split,
        "goal_met": ratio is not None and ratio >= GOAL_PER_CORE,
        "shipyard_haproxy": None if targets["shipyard-haproxy"] is not None else
        ("skipped: router.kind haproxy is not available on this branch (no shipyard.router.haproxy)"
         if not shipyard_haproxy_available() else "skipped: start_shipyard_haproxy() is not wired to it yet"),
    }
    if figures.get("shipyard-haproxy") and hap:
        sh = figures["shipyard-haproxy"]["proxy_us_per_request"]
        out["shipyard_haproxy_over_haproxy_cost"] = round(sh / hap, 3) if sh else None
    return out


# -- the report ------------------------------------------------------------------------------

def doc_body(res: dict[str, Any]) -> str:
    m, f = res["machine"], res["targets"]
    pinning = res["pinning"]
    placed = (f"the proxy under test alone on CPU {pinning['proxy_cpu']}, wrk (1 thread) and the backends on CPU "
              f"{pinning['load_cpu']}" if pinning["proxy_cpu"] is not None else "no pinning (one CPU)")
    lines = [f"Run of {res['date']}: {m['nproc']} CPUs ({m['cpu_model']}), {m['haproxy'] or 'HAProxy ?'}, "
             f"Python {m['python']}; load average {res['load_before']} before the run (1/5/15 min), "
             f"cpu probe {m['cpu_probe_ms']} ms; `benchmarks/router.py` (JSON in `benchmarks/results/router.json`).",
             "",
             f"Backend: {res['instances']} HAProxy processes answering a fixed 200 themselves. wrk, "
             f"{res['connections']} keep-alive connections, {res['seconds']} s per run, {res['rounds']} rounds "
             f"alternating the targets (medians shown); {placed}. CPU per request = utime + stime of the proxy "
             "process over the run / requests.", "",
             "| target | requests/s | p50 | p99 | failed | proxy CPU per request (user + sys) | per core vs HAProxy |",
             "|---|---|---|---|---|---|---|"]
    hap = f.get("haproxy", {}).get("proxy_us_per_request")
    for name in TARGETS:
        t = f.get(name)
        if t is None:
            lines.append(f"| {LABELS[name]} | - | - | - | - | - | {res['shipyard_haproxy']} |")
            continue
        us = t["proxy_us_per_request"]
        cost = (f"{us:.1f} µs ({t['proxy_user_us']:.1f} + {t['proxy_sys_us']:.1f})" if us is not None
                else f"(the instance: {t['backend_us_per_request']:.1f} µs)")
        per_core = f"{hap / us:.2f}x" if us and hap else "-"
        lines.append(f"| {LABELS[name]} | {t['rps']:,.0f} | {t['p50_ms']:.2f} ms | {t['p99_ms']:.2f} ms | "
                     f"{t['failed']} | {cost} | {per_core} |")
    if pinning["proxy_cpu"] is not None:
        pc, lc = pinning["proxy_cpu"], pinning["load_cpu"]
        lines += ["", "Busy share of the two CPUs during the runs (everything on the machine, medians): " + "; ".join(
            f"{name} {f[name]['cpu_busy'].get(pc, 0):.0%} / {f[name]['cpu_busy'].get(lc, 0):.0%}"
            for name in TARGETS if f.get(name)) + f" (proxy CPU {pc} / load CPU {lc})."]
    split = res.get("embedded_2_requests_per_worker")
    if split and sum(split):
        lines += ["", "2 workers: the kernel spread the connections so that the workers relayed "
                  + " / ".join(f"{n / sum(split):.0%}" for n in split) + " of the requests (all rounds, warm-ups included)."]
    r = res["embedded_over_haproxy_per_core"]
    lines += ["", f"Embedded router per core vs HAProxy `nbthread 1`: **{r}x** (goal >= {res['goal_per_core']}: "
              f"{'met' if res['goal_met'] else 'not met'})."]
    cost = res.get("shipyard_haproxy_over_haproxy_cost")
    if cost is not None:
        lines += ["", f"shipyard's HAProxy data plane vs plain HAProxy: **{cost}x** the CPU per request (goal <= "
                  f"{GOAL_HAPROXY_COST}: {'met' if cost <= GOAL_HAPROXY_COST else 'not met'}; where the difference "
                  "goes: the variants table below)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=2, help="backend processes (the track's instances)")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--seconds", type=int, default=8, help="seconds of each measured wrk run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measured run (pools fill)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets; medians are reported")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, no warm-up; JSON to the temp dir")
    p.add_argument("--json", type=Path, default=None, help=f"where the JSON goes (default {RESULTS})")
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the {SECTION} section of {DOC}")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 1, 0, 1
    if tools_missing(WRK, HAPROXY):
        return 1
    out = args.json or (Path(tempfile.gettempdir()) / "router.quick.json" if args.quick else RESULTS)
    load_before = loadavg_now()
    res = run_bounded("syrouter", lambda workdir, children: run(args, workdir, children))
    if isinstance(res, int):
        return res
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["load_before"] = load_before
    res["machine"] = machine()
    res["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    publish(res, out, doc_body(res), DOC, SECTION if args.write_doc and not args.quick else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
