#!/usr/bin/env python3
"""Why an A/A canary looks slower than stable: is it the router's measurement, or the canary's
instance really answering slower because it serves a twentieth of stable's per-instance rate?

Three parts, each short (the machine is shared):
- `recorded`: no CPU; per-track latency of canary_detection's recorded A/A series (both routers):
  share of requests above 1/5/10 ms, in the quieter and the busier half of the seconds.
- `live`: an A/A canary at --weight % on --router; per track, the latency the router counted
  (HAProxy: its log lines, parsed as the daemon does, also per server) beside the one the users
  measured, and HAProxy's per-server connects vs reuses. --weight 95 makes the canary the busy
  track; --warm RPS sends that many extra requests/s straight to the canary's instances.
- `direct`: no router: two identical instances, one at 10 requests/s and one at 190, then swapped.
Each part writes its JSON to results/aa_rate_probe.<part>.json.
Run: .venv/bin/python benchmarks/aa_rate_probe.py recorded|live|direct [--router haproxy]"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import canary_detection as cd
import numpy as np
from benchtools import run_bounded
from canarytools import RingRecorder, UserLoad

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import free_port
from shipyard.histogram import BOUNDS_MS
from shipyard.router.haproxy import log_lines

RESULTS = Path(__file__).resolve().parent / "results"
STAT_FIELDS = ("stot", "connect", "reuse")


def quantiles(ms: list[float]) -> dict[str, Any] | None:
    if not ms:
        return None
    a = np.asarray(ms)
    return {"n": len(a), **{f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)}}


# -- recorded ----------------------------------------------------------------------------------

def over(second: dict[str, Any], ms: float) -> tuple[int, int]:
    lat = second["latency"]
    return sum(n for b, n in lat.items() if BOUNDS_MS[int(b)] > ms), sum(lat.values())


def recorded() -> dict[str, Any]:
    """Share of requests slower than 1, 5, 10 ms per track, over all seconds and split by
    whether stable's own share that second is below its median (quiet) or not (busy)."""
    out: dict[str, Any] = {}
    for name in ("canary_detection.aa_series.json", "canary_detection.haproxy.aa_series.json"):
        pairs = json.loads((RESULTS / name).read_text())["pairs"]
        doc: dict[str, Any] = {"seconds": len(pairs)}
        for ms in (1.0, 5.0, 10.0):
            c = np.array([over(p[0], ms) for p in pairs], dtype=float)
            s = np.array([over(p[1], ms) for p in pairs], dtype=float)
            share = s[:, 0] / np.maximum(s[:, 1], 1)
            quiet = share < np.median(share)

            def pct(a: np.ndarray, rows: np.ndarray) -> float:
                return round(100 * a[rows, 0].sum() / max(a[rows, 1].sum(), 1), 2)
            every = np.ones(len(pairs), dtype=bool)
            doc[f">{ms:g}ms"] = {"canary_pct": pct(c, every), "stable_pct": pct(s, every),
                                 "quiet": [pct(c, quiet), pct(s, quiet)], "busy": [pct(c, ~quiet), pct(s, ~quiet)]}
        out[name] = doc
    return out


# -- live --------------------------------------------------------------------------------------

async def haproxy_stat(admin: Path) -> dict[str, dict[str, str]]:
    reader, writer = await asyncio.open_unix_connection(str(admin))
    writer.write(b"show stat\n")
    await writer.drain()
    text = (await reader.read()).decode()
    writer.close()
    rows = text.splitlines()
    head = rows[0].lstrip("# ").split(",")
    got = {}
    for row in rows[1:]:
        f = row.split(",")
        if len(f) == len(head) and f[0].startswith(cd.AA_SERVICE + "__") and f[1] not in ("FRONTEND", "BACKEND"):
            got[f"{f[0]}/{f[1]}"] = {k: f[head.index(k)] for k in STAT_FIELDS}
    return got


async def live_aa(api: AsyncApiClient, daemon: DaemonProcess, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    cd.STEPS[:] = [{"set_weight": args.weight}, {"pause": "10m"}]
    port = free_port()
    listen = f"127.0.0.1:{port}"
    v1 = cd.write_spec(state, "probe-v1", cd.AA_SERVICE, listen, cd.release("1"), args.router)
    v2 = cd.write_spec(state, "probe-v2", cd.AA_SERVICE, listen, cd.release("2"), args.router)
    await cd.deploy_first(api, v1)
    load = UserLoad("127.0.0.1", port, args.rate, 5000, seed=7)
    rec = cd.recorder(daemon, args.router)
    lines: list[tuple[float, str, str, float]] = []
    if isinstance(rec, RingRecorder):
        feed = rec.log.feed

        def tap(data: bytes, now: float) -> None:
            r = log_lines.parse(data)
            if r is not None:
                lines.append((now, r.backend, r.server, r.ms))
            feed(data, now)
        rec.log.feed = tap  # type: ignore[method-assign]
    load.start()
    rec.start()
    warm: list[UserLoad] = []
    try:
        await asyncio.sleep(cd.WARMUP)
        r = (await api.post("/v1/deploy", {"spec_path": str(v2)}))["rollout"]
        doc = await cd.until_phase(api, r["id"], ("paused", *cd.TERMINAL), 60)
        if isinstance(rec, RingRecorder):
            await rec.follow()
        if args.warm:
            status = await api.get(f"/v1/services/{cd.AA_SERVICE}")
            insts = status["slots"][doc["rollout"]["target_slot"]]["instances"]
            warm = [UserLoad(i["host"], i["port"], args.warm / len(insts), 5000, connections=4, seed=9) for i in insts]
            for w in warm:
                w.start()
            await asyncio.sleep(2.0)
        t0, w0 = time.monotonic(), time.time()
        await asyncio.sleep(args.seconds)
        t1, w1 = time.monotonic(), time.time()
        stat = await haproxy_stat(rec.sock) if isinstance(rec, RingRecorder) else {}
        doc = await api.get(f"/v1/rollouts/{r['id']}")
    finally:
        for w in warm:
            await w.stop()
        await load.stop()
        await rec.stop()
    rollout = doc["rollout"]
    await cd.end_canary(api, cd.AA_SERVICE, rollout)
    await api.request("DELETE", f"/v1/services/{cd.AA_SERVICE}")
    hits = [h for h in load.hits if t0 <= h.sent < t1 and h.status]
    seen = [x for x in lines if w0 <= x[0] < w1]
    return {
        "router": args.router, "weight": args.weight, "warm_rps": args.warm, "phase": rollout["phase"],
        "canary": rollout["target_slot"], "stable": rollout["previous_slot"],
        "client_ms": {f"v{v}": quantiles([(h.done - h.sent) * 1000 for h in hits if h.version == v]) for v in "12"},
        "router_ms": {b: quantiles([x[3] for x in seen if x[1] == b]) for b in sorted({x[1] for x in seen})},
        "server_ms": {f"{b}/{s}": quantiles([x[3] for x in seen if x[1:3] == (b, s)])
                      for b, s in sorted({x[1:3] for x in seen})},
        "haproxy_stat": stat,
    }


async def direct(api: AsyncApiClient, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Two instances of one release, loaded straight (no router) at 10 and 190 requests/s, swapped."""
    spec = cd.write_spec(state, "probe-direct", cd.AA_SERVICE, f"127.0.0.1:{free_port()}", cd.release("1"), "embedded")
    await cd.deploy_first(api, spec)
    status = await api.get(f"/v1/services/{cd.AA_SERVICE}")
    insts = [(i["host"], i["port"]) for s in status["slots"].values() for i in s["instances"]]
    runs = []
    for low, high in ((0, 1), (1, 0)):
        a = UserLoad(*insts[low], 10.0, 5000, seed=1)
        b = UserLoad(*insts[high], args.rate - 10.0, 5000, seed=2)
        a.start()
        b.start()
        await asyncio.sleep(args.seconds)
        await a.stop()
        await b.stop()
        runs.append({"low_rate_instance": low,
                     "low_10rps_ms": quantiles([(h.done - h.sent) * 1000 for h in a.hits if h.status]),
                     "high_ms": quantiles([(h.done - h.sent) * 1000 for h in b.hits if h.status])})
    await api.request("DELETE", f"/v1/services/{cd.AA_SERVICE}")
    return {"direct": runs}


async def on_daemon(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    daemon = DaemonProcess(state).start()
    api = AsyncApiClient(daemon.paths, timeout=180)
    try:
        return await (live_aa(api, daemon, state, args) if args.part == "live" else direct(api, state, args))
    finally:
        await api.aclose()
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("recorded", "live", "direct"))
    p.add_argument("--router", choices=cd.ROUTERS, default="haproxy")
    p.add_argument("--weight", type=int, default=5, help="the A/A canary's weight (%%)")
    p.add_argument("--warm", type=float, default=0.0, help="extra requests/s sent straight to the canary's instances")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=45.0)
    args = p.parse_args(argv)
    if args.part == "recorded":
        res: dict[str, Any] | int = recorded()
    else:
        res = run_bounded("aaprobe", lambda state, _children: on_daemon(args, state))
    if isinstance(res, int):
        return res
    res["command"] = " ".join(sys.argv)
    tag = args.part if args.part != "live" else f"live.{args.router}.w{args.weight}" + (f".warm{args.warm:g}" if args.warm else "")
    out = RESULTS / f"aa_rate_probe.{tag}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=1))
    print(f"JSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
