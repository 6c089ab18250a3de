#!/usr/bin/env python3
"""Where shipyard's HAProxy data plane spends its CPU per request (issue 14: within 5 % of plain
HAProxy): its configuration with one thing taken away at a time, next to plain HAProxy, on the
same backends in the same run.

Every variant is the configuration config.render writes for the benchmark's one-track table
(router/haproxy/config.py), edited by one line-level change, run as its own master-worker
HAProxy (process.py) whose servers are added over the Runtime API as the adapter adds them
(or written in the file: "file servers", as after a reload); the traffic log's reader runs in
this process. Same measure as benchmarks/router.py: wrk with 64 keep-alive connections, the
worker pinned alone on one CPU, wrk and the backends on the other, CPU per request = utime +
stime of the worker over the run / requests, rounds alternating the variants (medians).
Every process it starts is stopped at the end, also on failure or Ctrl-C.
Run: .venv/bin/python benchmarks/haproxy_variants.py [--quick] [--only a,b | --steps] [--write-doc]"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
    tools_missing,
)
from router import DOC, TICK, bench_table, cpu_ticks, cpus, pin, start_backend, start_plain_haproxy

from shipyard.devtools.demo import free_port
from shipyard.errors import ShipyardError
from shipyard.router.haproxy import config as cfg
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.log_lines import LOG_FORMAT, START_RULE
from shipyard.router.haproxy.logs import TrafficLog
from shipyard.router.haproxy.maps import map_entries, map_text
from shipyard.router.haproxy.process import POOL_ARGS, HAProxyProcess
from shipyard.router.haproxy.services import Server, server_name, service_config

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "haproxy_variants.json"
SECTION = "haproxy-variants"
SERVICE = "bench"
Edit = Callable[[str], str]


def drop(*patterns: str) -> Edit:
    """Remove every line matching one of `patterns` (regular expressions)."""
    return lambda text: "\n".join(ln for ln in text.split("\n") if not any(re.search(p, ln) for p in patterns))


def replace(old: str, new: str) -> Edit:
    def edit(text: str) -> str:
        if old not in text:
            raise ShipyardError(f"variant edit: {old!r} is not in the configuration any more", "update the variant")
        return text.replace(old, new)
    return edit


def chain(*edits: Edit) -> Edit:
    def edit(text: str) -> str:
        for e in edits:
            text = e(text)
        return text
    return edit


def same(text: str) -> str:
    return text


NO_LOG = drop(r"^    log ring@", r"^    log-format ", re.escape(START_RULE))
NO_RETRY_ON = drop(r"^    retry-on ", r"disable-l7-retry")
NO_ROUTING = chain(drop(r"set-var(-fmt)?\(txn\.sy_(tok|track|key|bucket)\)", r"acl sy_preview", r"no live release", r"^    use_backend "),
                   replace("    option forwardfor\n", f"    option forwardfor\n    default_backend {SERVICE}__blue\n"))
NO_HYGIENE = drop(r"http-request del-header ")
NO_FORWARDED = drop(r"option forwardfor", r"set-header x-forwarded-")
LEAN_ROUTING = chain(
    lambda t: re.sub(r"(http-request set-var\(txn\.sy_tok\) .*)",
                     r"\1 if { req.fhdr(x-shipyard-preview-token) -m found }", t),
    drop(r"set-var\(txn\.sy_bucket\)"),
    lambda t: re.sub(r"http-request set-var\(txn\.sy_track\) var\(txn\.sy_bucket\),map_int",
                     "http-request set-var(txn.sy_track) rand(10000),map_int", t),
    lambda t: re.sub(r"(use_backend \S+) if .*", r"\1", t))
OLD_RING = replace("    format raw\n", "    format rfc5424\n")
OLD_HYGIENE = chain(replace("del-header x-shipyard- -m beg", "del-header ^x-shipyard- -m reg"),
                    replace("del-header proxy- -m beg", "del-header ^proxy- -m reg"))
OLD_ROUTING = chain(
    lambda t: re.sub(r"(http-request set-var\(txn\.sy_tok\) \S+) if .*", r"\1", t),
    lambda t: re.sub(r"http-request set-var\(txn\.sy_track\) rand\(10000\),(map_int\(\S+\)) (unless .*)",
                     "http-request set-var(txn.sy_bucket) var(txn.sy_key),crc32,mod(10000) if { var(txn.sy_key) -m found }\n"
                     "    http-request set-var(txn.sy_bucket) rand(10000) unless { var(txn.sy_bucket) -m found }\n"
                     r"    http-request set-var(txn.sy_track) var(txn.sy_bucket),\1 \2", t),
    lambda t: re.sub(r"(use_backend \S+)\n", r"\1 if { var(txn.sy_track) -m found }\n", t))
"""The configuration before the cheaper rules, for the benchmark's table (no sticky key)."""
BARE = chain(NO_LOG, NO_RETRY_ON, NO_ROUTING, NO_HYGIENE, NO_FORWARDED)


@dataclass(frozen=True)
class Variant:
    label: str
    edit: Edit = same
    server_args: Callable[[str], str] = same
    """Edits the arguments of `add server` (the pool arguments, for the variant before the fix)."""
    file_servers: bool = False
    args: tuple[str, ...] = ()
    """Extra arguments of the haproxy command line."""
    drop_args: tuple[str, ...] = ()
    """Arguments process.py gives HAProxy that this variant goes without."""


VARIANTS: dict[str, Variant] = {
    "shipyard": Variant("shipyard's configuration, servers added by `add server` (as served)"),
    "before-pool-fix": Variant("... as before: added servers without `pool-max-conn -1 pool-purge-delay 5s`",
                               server_args=lambda a: a.replace(f" {cfg.SERVER_POOL}", "")),
    "file-servers": Variant("... servers in the configuration file (as after a reload)", file_servers=True),
    "no-retry-on": Variant("... without `retry-on conn-failure empty-response` (idempotent retry)", NO_RETRY_ON),
    "no-log": Variant("... without the per-request log line (ring, log-format, time stamp)", NO_LOG),
    "no-start-stamp": Variant("... without the microsecond start stamp only", drop(re.escape(START_RULE))),
    "ring-rfc5424": Variant("... the log ring in `format rfc5424` (a syslog header per line) instead of raw",
                            OLD_RING),
    "no-routing": Variant("... without the routing rules (preview token, sticky bucket, maps, 503)", NO_ROUTING),
    "no-hygiene": Variant("... without deleting x-shipyard-*, proxy-*, keep-alive, te", NO_HYGIENE),
    "hygiene-reg": Variant("... deleting x-shipyard-* and proxy-* by a regex (`^x-shipyard- -m reg`) instead "
                           "of by prefix", OLD_HYGIENE),
    "hygiene-one-reg": Variant("... the four header deletions as one regex",
                               chain(drop(r"del-header (proxy- -m beg|keep-alive|te)$"),
                                     replace("del-header x-shipyard- -m beg",
                                             "del-header ^(x-shipyard-|proxy-|keep-alive$|te$) -m reg"))),
    "routing-before": Variant("... the routing rules as before (token looked up for every request, bucket, "
                              "then track, use_backend guarded)", OLD_ROUTING),
    "before": Variant("shipyard's configuration before: rfc5424 ring, regex deletions, routing as before, "
                      "no `-dMglobal`", chain(OLD_RING, OLD_HYGIENE, OLD_ROUTING), drop_args=POOL_ARGS),
    "no-forwarded": Variant("... without X-Forwarded-For/-Proto/-Host", NO_FORWARDED),
    "no-maxconn": Variant("... without the per-instance `maxconn`",
                          server_args=lambda a: re.sub(r"maxconn \d+ ", "", a)),
    "bufsize-8k": Variant("... `tune.bufsize 8192` (the retry copy halves; request heads over ~7 KB refused)",
                          replace("    master-worker\n", "    master-worker\n    tune.bufsize 8192\n")),
    "pools-local": Variant("... HAProxy started without `-dMglobal` (each worker's own 512 KB pool cache only)",
                           drop_args=POOL_ARGS),
    "bare-pools-local": Variant("bare (below), started without `-dMglobal`: what the pool cache saves without "
                                "shipyard's rules", BARE, drop_args=POOL_ARGS),
    "xff-only": Variant("... X-Forwarded-For only (no X-Forwarded-Proto/-Host set-header)",
                        drop(r"set-header x-forwarded-")),
    "reuse-always": Variant("... with `http-reuse always` (plain's)",
                            replace("defaults\n", "defaults\n    http-reuse always\n")),
    "bare": Variant("all of the above removed (master-worker, state file, timeouts remain)", BARE),
    # one removal after another: each step's cost is the difference to the line above it
    "steps-1": Variant("steps: shipyard without retry-on", NO_RETRY_ON),
    "steps-2": Variant("steps: ... and without the log line", chain(NO_RETRY_ON, NO_LOG)),
    "steps-3": Variant("steps: ... and without X-Forwarded-*", chain(NO_RETRY_ON, NO_LOG, NO_FORWARDED)),
    "steps-4": Variant("steps: ... and without the header deletions",
                       chain(NO_RETRY_ON, NO_LOG, NO_FORWARDED, NO_HYGIENE)),
    "steps-5": Variant("steps: ... and without the routing rules (= bare)", BARE),
    "steps-6": Variant("steps: ... and without the per-instance maxconn", BARE,
                       server_args=lambda a: re.sub(r"maxconn \d+ ", "", a)),
}
STEPS = ["shipyard", *(f"steps-{i}" for i in range(1, 7))]
"""`--steps`: the cumulative removals, a steadier reading on a noisy machine than one removal each."""


async def start_variant(children: Children, name: str, v: Variant, backends: list[int], logs: list[TrafficLog],
                        procs: list[tuple[HAProxyProcess, Path]]) -> tuple[int, int]:
    """The variant's HAProxy serving the one-track table; (port, worker pid)."""
    table = bench_table(backends)
    root = Path(tempfile.mkdtemp(prefix="syhv"))   # short: unix socket paths are ~100 bytes at most
    files = Files(root)
    binary = None
    if v.args or v.drop_args:   # a wrapper edits the command line HAProxyProcess builds
        binary = str(root / "haproxy")
        dropped = "|".join(v.drop_args) or "''"
        Path(binary).write_text("#!/bin/sh\n"
                                f"for a do shift; case $a in {dropped}) ;; *) set -- \"$@\" \"$a\";; esac; done\n"
                                f"exec {HAPROXY} {' '.join(v.args)} \"$@\"\n")
        os.chmod(binary, 0o755)
    proc = HAProxyProcess(files, binary)
    procs.append((proc, root))
    port = free_port()
    servers = {"blue": tuple(Server(server_name(u), u.host, u.port) for u in table.tracks["blue"])}
    svc = service_config(f"127.0.0.1:{port}", table, servers if v.file_servers else {})
    text = v.edit(cfg.render([svc], files, LOG_FORMAT, START_RULE))
    files.maps.mkdir(parents=True, exist_ok=True)
    for kind, rows in map_entries(table).items():
        files.map_file(SERVICE, kind).write_text(map_text(rows))
    traffic = TrafficLog(SERVICE)
    await traffic.start_stream(files.log_socket(SERVICE))
    logs.append(traffic)
    await proc.start(text)
    if not v.file_servers:
        for srv in servers["blue"]:
            args = v.server_args(cfg.server_line(srv, table.max_conns_per_instance).split(" ", 2)[2])
            await proc.api.add_server(f"{SERVICE}__blue", srv.name, args)
    if proc.worker_pid is None:
        raise ShipyardError(f"variant {name}: HAProxy started without a worker answering")
    return port, proc.worker_pid


async def measure(children: Children, workdir: Path, port: int, pid: int, seconds: int, warmup: int,
                  connections: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/"
    if warmup:
        await run_wrk(children, workdir, url, warmup, connections, threads=1)
    before = cpu_ticks(pid)
    res = await run_wrk(children, workdir, url, seconds, connections, threads=1, count_non2xx=True)
    after = cpu_ticks(pid)
    n = res["requests"] or 1
    failed = res["connect"] + res["read"] + res["write"] + res["timeout"] + max(0, res["non2xx"])
    return {"us": round((sum(after) - sum(before)) / TICK * 1e6 / n, 2),
            "user_us": round((after[0] - before[0]) / TICK * 1e6 / n, 2),
            "sys_us": round((after[1] - before[1]) / TICK * 1e6 / n, 2),
            "rps": round(res["rps"], 1), "failed": failed}


async def run(args: argparse.Namespace, workdir: Path, children: Children) -> dict[str, Any]:
    proxy_cpu, load_cpu = cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    logs: list[TrafficLog] = []
    procs: list[tuple[HAProxyProcess, Path]] = []
    try:
        backends = [await start_backend(children, workdir, i) for i in range(args.instances)]
        ports = [p for p, _ in backends]
        plain = await start_plain_haproxy(children, workdir, ports)
        assert plain.pid is not None
        targets = {"plain": (plain.port, plain.pid)}
        for name in args.only:
            targets[name] = await start_variant(children, name, VARIANTS[name], ports, logs, procs)
        for _, pid in targets.values():
            pin(pid, proxy_cpu)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for r in range(args.rounds):
            for name, (port, pid) in targets.items():
                print(f"round {r + 1}/{args.rounds}: {name} ...", flush=True)
                runs[name].append(await measure(children, workdir, port, pid, args.seconds, args.warmup,
                                                args.connections))
    finally:
        for proc, root in procs:
            proc.kill()
            shutil.rmtree(root, ignore_errors=True)
        for traffic in logs:
            await traffic.close()
        if load_cpu is not None:
            os.sched_setaffinity(0, {proxy_cpu, load_cpu} | os.sched_getaffinity(0))

    def med(name: str, key: str) -> float:
        return round(statistics.median(x[key] for x in runs[name]), 2)
    figures = {n: {"us_per_request": med(n, "us"), "user_us": med(n, "user_us"), "sys_us": med(n, "sys_us"),
                   "rps": med(n, "rps"), "failed": sum(x["failed"] for x in runs[n]),
                   "rounds_us": [x["us"] for x in runs[n]]} for n in runs}
    return {"variants": figures, "instances": args.instances, "connections": args.connections,
            "seconds": args.seconds, "rounds": args.rounds, "pinning": {"proxy_cpu": proxy_cpu, "load_cpu": load_cpu}}


def doc_body(res: dict[str, Any]) -> str:
    m, f = res["machine"], res["variants"]
    plain = f["plain"]["us_per_request"]
    base = f.get("shipyard", {}).get("us_per_request")
    lines = [f"Run of {res['date']}: {m['nproc']} CPUs ({m['cpu_model']}), {m['haproxy'] or 'HAProxy ?'}; load "
             f"average {res['load_before']} before the run, cpu probe {m['cpu_probe_ms']} ms; "
             f"`benchmarks/haproxy_variants.py{' --steps' if res['steps'] else ''}` (JSON in "
             f"`benchmarks/results/haproxy_variants{'_steps' if res['steps'] else ''}.json`). "
             f"{res['instances']} backends answering 200 themselves, wrk {res['connections']} keep-alive "
             f"connections, {res['seconds']} s per run, {res['rounds']} rounds alternating the variants "
             "(medians; every round's figure in the JSON).", "",
             "| variant | CPU per request (user + sys) | vs plain | vs shipyard | requests/s | failed |",
             "|---|---|---|---|---|---|",
             f"| plain HAProxy `nbthread 1` (benchmarks/router.py's) | {plain:.1f} µs ({f['plain']['user_us']:.1f} + "
             f"{f['plain']['sys_us']:.1f}) | 1.00x | - | {f['plain']['rps']:,.0f} | {f['plain']['failed']} |"]
    for name, v in VARIANTS.items():
        t = f.get(name)
        if t is None:
            continue
        us = t["us_per_request"]
        delta = f"{us - base:+.1f} µs" if base is not None and name != "shipyard" else "-"
        lines.append(f"| {v.label} | {us:.1f} µs ({t['user_us']:.1f} + {t['sys_us']:.1f}) | {us / plain:.2f}x | "
                     f"{delta} | {t['rps']:,.0f} | {t['failed']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=int, default=4, help="seconds of each measured wrk run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[n for n in VARIANTS if not n.startswith("steps-")],
                   help=f"comma-separated variants (default all: {','.join(VARIANTS)})")
    p.add_argument("--steps", action="store_true", help="only the cumulative removals (shipyard, steps-1..6)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, no warm-up; JSON to the temp dir")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--write-doc", action="store_true", help=f"rewrite the {SECTION} section of {DOC}")
    args = p.parse_args(argv)
    if args.steps:
        args.only = STEPS
    unknown = [n for n in args.only if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.quick:
        args.seconds, args.warmup, args.rounds = 1, 0, 1
    if tools_missing(WRK, HAPROXY):
        return 1
    section = f"{SECTION}-steps" if args.steps else SECTION
    results = RESULTS.with_name(f"{RESULTS.stem}_steps.json") if args.steps else RESULTS
    out = args.json or (Path(tempfile.gettempdir()) / "haproxy_variants.quick.json" if args.quick else results)
    load_before = loadavg_now()
    res = run_bounded("syhvar", lambda workdir, children: run(args, workdir, children))
    if isinstance(res, int):
        return res
    res.update(steps=args.steps, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_before=load_before,
               load_after=loadavg_now(), machine=machine())
    publish(res, out, doc_body(res), DOC, section if args.write_doc and not args.quick else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
