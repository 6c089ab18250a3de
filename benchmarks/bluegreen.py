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
    Children,
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
MIN_GAP = 0.25
"""Quiet time after one switch returned before the next may start, so every switch has
a window of its own in which to settle."""


# -- the prober: which release answered each request, by send time ---------------------------

@dataclass(frozen=True)
class Probe:
    sent: float             # time.monotonic() just before the request was written
    done: float
    status: int             # 0: no response (connection error, timeout, bad response)
    version: str | None     # X-Shop-Version of the answer


class Prober:
    """A few keep-alive connections sending GET / back to back. Raw HTTP/1.1 on asyncio
    streams rather than httpx: cheaper per request, so send times are dense and precise."""

    def __init__(self, host: str, port: int, connections: int = 4) -> None:
        self.host, self.port, self.connections = host, port, connections
        self.probes: list[Probe] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connection()) for _ in range(self.connections)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self) -> None:
        request = f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: sybench\r\n\r\n".encode()
        while not self._stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                while not self._stop.is_set():
                    sent = time.monotonic()
                    writer.write(request)
                    async with asyncio.timeout(5.0):
                        status, version, close = await read_response(reader)
                    self.probes.append(Probe(sent, time.monotonic(), status, version))
                    if close:
                        break
            except (OSError, EOFError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                self.probes.append(Probe(time.monotonic(), time.monotonic(), 0, None))
                self.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.01)
            finally:
                if writer is not None:
                    writer.close()

    def failures(self) -> int:
        return sum(1 for p in self.probes if not 200 <= p.status < 300)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, str | None, bool]:
    """(status, X-Shop-Version, server will close) of one response; its body is read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")   # no trailers expected: the empty line after the last chunk
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("x-shop-version"), headers.get("connection", "").lower() == "close"


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
    """wrk + prober on the router for --duration s while 2*cycles CLI and 2*cycles API switches
    run, in pairs (CLI there and back, API there and back), spaced evenly."""
    n = 4 * args.cycles
    spacing = (args.duration - 2 * WARMUP) / n
    prober = Prober(host, port)
    prober.start()
    wrk = asyncio.create_task(run_wrk(children, state, f"http://{host}:{port}/", args.duration,
                                      args.connections, count_non2xx=True))
    t0 = time.monotonic()
    last_start_allowed = t0 + args.duration - WARMUP
    switches: list[Switch] = []
    version = "2"
    try:
        free_at = t0 + WARMUP
        for k in range(n):
            start = max(t0 + WARMUP + k * spacing, free_at)
            if start > last_start_allowed:
                break
            await asyncio.sleep(start - time.monotonic())
            version = "1" if version == "2" else "2"
            sw = (await switch_cli(children, state, version) if (k // 2) % 2 == 0
                  else await switch_api(api, version))
            switches.append(sw)
            free_at = time.monotonic() + MIN_GAP
            if not sw.ok:
                break
        load = await wrk
    finally:
        if not wrk.done():
            wrk.cancel()
        await prober.stop()
    probes = sorted(prober.probes, key=lambda p: p.sent)
    for i, sw in enumerate(switches):
        measure_settle(sw, probes, switches[i + 1].t_cmd if i + 1 < len(switches) else float("inf"))
    return {"wrk": load, "switches": switches, "prober": prober, "spacing_s": spacing}


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
    if shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists():
        hport = free_port()
        proc = await start_haproxy(children, state, hport, backends, threads=1)
        try:
            await wait_port("127.0.0.1", hport, proc)
            out["haproxy"] = await run_wrk(children, state, f"http://127.0.0.1:{hport}/", secs, conns)
            out["haproxy"]["nbthread"] = 1
        finally:
            await children.stop(proc)
    return out


# -- report ----------------------------------------------------------------------------------

def stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": statistics.median(values) if values else None, "max": max(values) if values else None,
            "n": len(values)}


def summarize(args: argparse.Namespace, sp: dict[str, Any], tp: dict[str, Any] | None) -> dict[str, Any]:
    sws: list[Switch] = sp["switches"]
    wrk, prober = sp["wrk"], sp["prober"]
    wrk_failed = sum(wrk[k] for k in ("connect", "read", "write", "timeout")) + max(wrk["non2xx"], wrk["status"])
    router_failed = wrk_failed + prober.failures()
    if tp is not None:
        r = tp["router"]
        router_failed += sum(r[k] for k in ("connect", "read", "write", "timeout", "status"))

    def series(method: str) -> dict[str, Any]:
        mine = [s for s in sws if s.method == method]
        good = [s for s in mine if s.ok and s.settle_ms is not None]
        cycles = sum(1 for i in range(0, len(mine) - 1, 2) if mine[i] in good and mine[i + 1] in good)
        return {"switches": len(mine), "settled": len(good), "cycles": cycles,
                "settle_ms": stats([s.settle_ms for s in good if s.settle_ms is not None]),
                "wall_ms": stats([s.wall_ms for s in mine]),
                "settled_before_return": sum(1 for s in good if (s.settle_ms or 0) <= s.wall_ms)}

    cli, api = series("cli"), series("api")
    result: dict[str, Any] = {
        "benchmark": "bluegreen", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {},
        "options": {"duration_s": args.duration, "cycles": args.cycles, "connections": args.connections,
                    "throughput_seconds": args.throughput_seconds, "spacing_s": round(sp["spacing_s"], 3),
                    "prober_connections": prober.connections},
        "goal_settle_ms": GOAL_MS,
        "failed_requests": {"total_through_router": router_failed, "switch_wrk": wrk_failed,
                            "prober": prober.failures(), "prober_errors": prober.errors[:20]},
        "switch_load": wrk, "prober_requests": len(prober.probes),
        "cli": cli, "api": api,
        "goal_met": {"cli": (cli["settle_ms"]["max"] or 1e9) <= GOAL_MS,
                     "api": (api["settle_ms"]["max"] or 1e9) <= GOAL_MS},
        "switches": [{**{k: v for k, v in asdict(s).items() if k not in ("t_cmd", "t_done")},
                      "wall_ms": s.wall_ms} for s in sws],
        "throughput": tp,
    }
    if tp is not None:
        rps = {k: tp[k]["rps"] for k in ("router", "direct", "haproxy") if tp.get(k)}
        result["ratios"] = {"router_over_direct": rps["router"] / rps["direct"],
                            "router_over_haproxy": rps["router"] / rps["haproxy"] if "haproxy" in rps else None}
    result["ok"] = router_failed == 0 and cli["cycles"] >= args.cycles and api["cycles"] >= args.cycles
    return result


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def markdown(res: dict[str, Any]) -> str:
    """The bluegreen section of docs/benchmarks.md: the run's figures as tables."""
    m, cli, api, f = res["machine"], res["cli"], res["api"], res["failed_requests"]
    o = res["options"]
    lines = [
        f"Run of {res['date']} on {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']}. "
        f"Load: wrk {o['connections']} keep-alive connections through the router for {o['duration_s']} s, "
        f"plus a {o['prober_connections']}-connection prober; switches every {o['spacing_s']:.2f} s.",
        "",
        "| figure | result | goal |",
        "|---|---|---|",
        f"| failed requests through the router (wrk errors + non-2xx + prober) | {f['total_through_router']} "
        f"of {res['switch_load']['requests'] + res['prober_requests']:,} in the switch phase "
        f"(+ {res['throughput']['router']['requests']:,} in the throughput run) | 0 |"
        if res["throughput"] else
        f"| failed requests through the router | {f['total_through_router']} | 0 |",
        f"| switch/rollback cycles under load | {cli['cycles']} by CLI + {api['cycles']} by API "
        f"({cli['switches'] + api['switches']} switches) | >= {o['cycles']} |",
    ]
    for name, s, what in (("CLI", cli, "`shipyard rollback shop` started"), ("API", api, "POST .../rollback sent")):
        goal = "met" if res["goal_met"][name.lower()] else "**not met**"
        lines.append(f"| {what} -> every new request on the target (p50 / max) | "
                     f"{ms(s['settle_ms']['p50'])} / {ms(s['settle_ms']['max'])} | <= {GOAL_MS:.0f} ms ({goal}) |")
    lines += [f"| CLI process wall time (p50 / max) | {ms(cli['wall_ms']['p50'])} / {ms(cli['wall_ms']['max'])} | |",
              f"| API call time (p50 / max) | {ms(api['wall_ms']['p50'])} / {ms(api['wall_ms']['max'])} | |",
              f"| switches settled before the command returned | {cli['settled_before_return']}/{cli['switches']} "
              f"CLI, {api['settled_before_return']}/{api['switches']} API | |"]
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
    for s in res["switches"]:
        print(f"  {s['method']} -> v{s['target']}: {'ok' if s['ok'] else 'FAILED'}  settle {ms(s['settle_ms'])}  "
              f"last old {ms(s['last_old_ms'])}  wall {ms(s['wall_ms'])}  ({s['probes']} probes)"
              + ("" if s["ok"] else f"  {s['detail']}"))
    print("\nresult:", "PASS" if res["ok"] else "FAIL (failed requests or too few cycles)")


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
        tp = None
        if args.throughput_seconds > 0:
            print(f"throughput phase: {args.throughput_seconds} s each for router, direct, haproxy ...", flush=True)
            tp = await throughput_phase(args, children, api, state, listen)
        return summarize(args, sp, tp)
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
    p.add_argument("--output", type=Path, default=HERE / "results" / "bluegreen.json")
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the bluegreen section of {DOC}")
    args = p.parse_args(argv)
    if args.duration < 20 or args.cycles < 1 or args.connections < 1:
        p.error("the acceptance needs --duration >= 20, --cycles >= 1 and --connections >= 1")
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
    res["machine"] = machine()
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
