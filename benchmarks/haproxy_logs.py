"""What HAProxy's per-request log costs: requests/s through one HAProxy (`nbthread 1`) with no
log, with LOG_FORMAT, with LOG_FORMAT plus START_RULE (microsecond latency), and the latter
through a `ring` forwarded over a unix stream, each line read by shipyard's TrafficLog in
this process; and how many of wrk's requests the log
counted (HAProxy drops a line when the socket's queue, net.unix.max_dgram_qlen, is full);
CPU microseconds per request of the HAProxy process (/proc/PID/stat) and per line of the reader.

The instances are one more HAProxy answering a fixed 200 itself, so the proxy under test
is the bottleneck. wrk: 64 keep-alive connections, 2 threads, `--seconds` per run, the
variants interleaved `--rounds` times. Prints JSON; writes results/haproxy_logs.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchtools import HAPROXY, Children, kill_everything_under, machine, run_wrk, wait_port

from shipyard.errors import ShipyardError
from shipyard.router.haproxy.log_lines import LOG_FORMAT, START_RULE
from shipyard.router.haproxy.logs import TrafficLog

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "haproxy_logs.json"
VARIANTS = ("no log", "LOG_FORMAT", "LOG_FORMAT + START_RULE", "ring: LOG_FORMAT + START_RULE")


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proxy_cfg(port: int, backend: int, sock: Path, variant: str) -> str:
    target = "ring@sylog" if variant.startswith("ring") else f"unix@{sock} format rfc5424"
    log = "" if variant == "no log" else f'    log {target} local0 info\n    log-format "{LOG_FORMAT}"\n'
    rule = f"    {START_RULE}\n" if variant.endswith("START_RULE") else ""
    ring = f"""ring sylog
    format rfc5424
    maxlen 1200
    size 4194304
    timeout connect 1s
    timeout server 30s
    server reader unix@{sock}
""" if variant.startswith("ring") else ""
    return ring + f"""global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{port}
{log}{rule}    default_backend svc__blue
backend svc__blue
    server b1 127.0.0.1:{backend}
"""


async def run(args: argparse.Namespace, work: Path, children: Children) -> dict[str, Any]:
    backend = free_port()
    (work / "backend.cfg").write_text(f"""global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout client 30s
frontend instance
    bind 127.0.0.1:{backend}
    http-request return status 200 content-type text/plain string ok
""")
    out = open(work / "backend.out", "wb")
    b = await children.spawn([HAPROXY, "-f", str(work / "backend.cfg"), "-db"], stdout=out, stderr=out)
    await wait_port("127.0.0.1", backend, b)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            port, sock = free_port(), work / "log.sock"
            log = TrafficLog("svc")
            await (log.start_stream(sock) if variant.startswith("ring") else log.start(sock))
            cfg = work / "proxy.cfg"
            cfg.write_text(proxy_cfg(port, backend, sock, variant))
            p = await children.spawn([HAPROXY, "-f", str(cfg), "-db"], stdout=out, stderr=out)
            try:
                await wait_port("127.0.0.1", port, p)
                before = log.stats()["log"]["records"]
                cpu0, own0 = cpu_ticks(p.pid), time.process_time()
                res = await run_wrk(children, work, f"http://127.0.0.1:{port}/", args.seconds, 64)
                await asyncio.sleep(0.5)
                counted = log.stats()["log"]["records"] - before
                cpu, own = cpu_ticks(p.pid) - cpu0, time.process_time() - own0
            finally:
                await children.stop(p)
                await log.close()
            runs[variant].append({
                "rps": round(res["rps"]), "requests": res["requests"], "p99_us": res["p99_us"],
                "haproxy_cpu_us_per_request": round(cpu * 1e6 / TICKS / res["requests"], 2),
                "reader_cpu_us_per_line": round(own * 1e6 / counted, 2) if counted else None,
                "logged": counted if variant != "no log" else None})
    summary = {}
    base = statistics.median(r["rps"] for r in runs["no log"])
    for variant, rs in runs.items():
        rps = statistics.median(r["rps"] for r in rs)
        logged = [r["logged"] / r["requests"] for r in rs if r["logged"] is not None]
        summary[variant] = {"rps_median": rps, "vs_no_log": round(rps / base, 3),
                            "haproxy_cpu_us_per_request": statistics.median(
                                r["haproxy_cpu_us_per_request"] for r in rs),
                            "reader_cpu_us_per_line": statistics.median(
                                r["reader_cpu_us_per_line"] or 0 for r in rs) if variant != "no log" else None,
                            "logged_share": round(statistics.median(logged), 4) if logged else None}
    return {"runs": runs, "summary": summary,
            "max_dgram_qlen": int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="syhlog"))
    children = Children()

    async def go() -> dict[str, Any]:
        try:
            return await run(args, work, children)
        finally:
            await children.stop_all()
    try:
        res = asyncio.run(go())
    except ShipyardError as e:
        print(f"benchmark failed: {e.message}", file=sys.stderr)
        return 1
    finally:
        kill_everything_under(work)
        shutil.rmtree(work, ignore_errors=True)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["machine"] = {**machine(), "loadavg_1min": float(Path("/proc/loadavg").read_text().split()[0])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
