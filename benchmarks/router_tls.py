"""What TLS termination costs the embedded router: requests/s, latency and router CPU per
request, plain HTTP vs TLS, with 64 keep-alive connections (the steady state: one handshake
per connection) and with a new connection per request (every request pays a handshake).

The backend is a near-free HAProxy answering 200 itself, so the figures are the router's.
The router runs as its own process from a table file (what the daemon pushes), with a
certificate made for the run (an ECDSA P-256 test CA; `cryptography`, from the test extras).

    .venv/bin/python benchmarks/router_tls.py [--seconds 10] [--write-doc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchtools import HAPROXY, Children, machine, run_wrk, wait_port, write_doc_section  # noqa: E402

from shipyard.certificates import install, read_pair  # noqa: E402
from shipyard.router.dataplane.control_server import save_table  # noqa: E402
from shipyard.router.table import RoutingTable, TableTls, Upstream  # noqa: E402
from support.certs import TestCA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 64
CHURN_CONNECTIONS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])      # utime + stime


async def backend(children: Children, work: Path) -> tuple[int, Any]:
    port = free_port()
    cfg = work / "backend.cfg"
    cfg.write_text(f"""global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout client 30s
    timeout connect 2s
    timeout server 30s
frontend app
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "ok"
""")
    with open(work / "backend.log", "wb") as log:
        proc = await children.spawn([HAPROXY, "-f", str(cfg), "-db"], stdout=log, stderr=asyncio.subprocess.STDOUT)
    await wait_port("127.0.0.1", port, proc, log=work / "backend.log")
    return port, proc


async def router(children: Children, work: Path, name: str, table: RoutingTable) -> tuple[int, Any]:
    port = free_port()
    save_table(work / f"{name}.json", table)
    with open(work / f"{name}.log", "wb") as log:
        proc = await children.spawn(
            [sys.executable, "-m", "shipyard.router.dataplane.proxy", "--service", "bench", "--listen",
             f"127.0.0.1:{port}", "--control", str(work / f"{name}.sock"), "--table", str(work / f"{name}.json")],
            stdout=log, stderr=asyncio.subprocess.STDOUT)
    await wait_port("127.0.0.1", port, proc, log=work / f"{name}.log")
    return port, proc


async def measure(children: Children, work: Path, url: str, pid: int, seconds: int, connections: int,
                  close: bool) -> dict[str, Any]:
    before = cpu_ticks(pid)
    r = await run_wrk(children, work, url, seconds, connections, threads=2, count_non2xx=True) if not close \
        else await _wrk_close(children, work, url, seconds, connections)
    ticks = cpu_ticks(pid) - before
    r["router_cpu_us_per_request"] = round(ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(r["requests"], 1), 1)
    return r


async def _wrk_close(children: Children, work: Path, url: str, seconds: int, connections: int) -> dict[str, Any]:
    """run_wrk's figures with a Connection: close header (benchtools' script plus that line)."""
    import benchtools
    script = work / "wrk-close.lua"
    script.write_text(benchtools._LUA_DONE + benchtools._LUA_COUNT + 'wrk.headers["Connection"] = "close"\n')
    proc = await children.spawn([benchtools.WRK, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                                 "-s", str(script), url], stdout=asyncio.subprocess.PIPE,
                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    line = next(ln for ln in out.decode().splitlines() if ln.startswith("WRKJSON "))
    d = json.loads(line.split(" ", 1)[1])
    d["rps"] = round(d["requests"] / (d["duration_us"] / 1e6), 1)
    return d


def table_md(results: dict[str, Any]) -> str:
    rows = ["| connections | listener | requests/s | p50 | p99 | errors (all runs) | router CPU µs/request "
            "| TLS relative to plain (requests/s; CPU) |",
            "|---|---|---|---|---|---|---|---|"]
    for load in ("keep-alive", "new connection per request"):
        plain = results[load]["plain"]["rps"]
        for mode in ("plain", "tls"):
            r = results[load][mode]
            errors = r["errors_all_runs"]
            base = results[load]["plain"]["router_cpu_us_per_request"]
            rel = (f"{r['rps'] / plain:.2f}; {r['router_cpu_us_per_request'] / base:.2f}" if mode == "tls"
                   else "1.00; 1.00")
            conns = CONNECTIONS if load == "keep-alive" else CHURN_CONNECTIONS
            rows.append(f"| {conns} {load} | {'TLS 1.3' if mode == 'tls' else 'plain HTTP'} | {r['rps']:,.0f} | "
                        f"{r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms | {errors} | "
                        f"{r['router_cpu_us_per_request']} | {rel} |")
    m = results["machine"]
    return ("\n".join(rows) + f"\n\nBackend: HAProxy answering 200 itself (nbthread 1). "
            f"{results['repeat']} runs of {results['seconds']} s per row, plain and TLS interleaved, wrk 2 threads; "
            "requests/s, p50, p99 of the median run, CPU the median over the runs (from /proc/PID/stat of "
            f"the router process). Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
            f"Python {m['python']}, CPU probe {m['cpu_probe_ms']} ms (lower is faster; shared machine).\n")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if not shutil.which(HAPROXY) and not Path(HAPROXY).exists():
        raise SystemExit(f"{HAPROXY} is needed as the near-free backend (bash tools/system-deps.sh)")
    children = Children()
    work = Path(tempfile.mkdtemp(prefix="sy-tlsbench-"))
    try:
        ca = TestCA(work / "ca")
        pair = ca.issue("bench", ("localhost", "127.0.0.1"))
        cert, key = install(read_pair(pair.cert, pair.key), work / "tls")
        bport, _ = await backend(children, work)
        ups = {"blue": (Upstream("b0", "127.0.0.1", bport),)}
        plain_t = RoutingTable("bench", 1, ups, {"blue": 100})
        tls_t = RoutingTable("bench", 1, ups, {"blue": 100}, tls=TableTls(str(cert), str(key), pair.fingerprint))
        out: dict[str, Any] = {"seconds": args.seconds, "repeat": args.repeat, "machine": machine()}
        for load, close, conns in (("keep-alive", False, CONNECTIONS),
                                   ("new connection per request", True, CHURN_CONNECTIONS)):
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tls": []}
            for _ in range(args.repeat):     # interleaved, so a noisy neighbour hurts both alike
                for mode, table in (("plain", plain_t), ("tls", tls_t)):
                    port, proc = await router(children, work, f"{mode}-{int(close)}", table)
                    scheme = "https" if mode == "tls" else "http"
                    r = await measure(children, work, f"{scheme}://localhost:{port}/", proc.pid, args.seconds,
                                      conns, close)
                    await children.stop(proc)
                    runs[mode].append(r)
                    print(load, mode, json.dumps({k: r[k] for k in
                                                  ("rps", "p50_us", "p99_us", "router_cpu_us_per_request")}))
            out[load] = {mode: _median_run(rs) | {"runs": rs} for mode, rs in runs.items()}
        return out
    finally:
        await children.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s, and the median router CPU per request over all runs."""
    best = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    cpu = statistics.median(r["router_cpu_us_per_request"] for r in runs)
    errors = sum(sum(r[k] for k in ("connect", "read", "write", "timeout")) + max(r["non2xx"], 0) for r in runs)
    return {**best, "router_cpu_us_per_request": cpu, "errors_all_runs": errors}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--write-doc", action="store_true")
    a = p.parse_args()
    res = asyncio.run(main(a))
    md = table_md(res)
    print(md)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "router_tls.json").write_text(json.dumps(res, indent=1))
    if a.write_doc:
        write_doc_section(ROOT / "docs" / "benchmarks.md", "TLS termination cost", md)
