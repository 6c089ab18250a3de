#!/usr/bin/env python3
"""The fleet drift scan (runtime/ssh/drift_scan.py) on N namespace hosts with real sshd
(tests/support/netns_hosts.py): the time of one `shipyard drift` of a service across every
host, metadata pass vs full re-hash. Each host runs K instances of one image whose tree has
F files, started by SshRuntime, plus a managed HAProxy config file outside the tree; each
host is asked in one helper round trip, all hosts at once.

Measured after a warm-up scan (which opens each host's scan helper and, with files older
than the 2 s racy window, records the metadata baselines): R metadata scans and R full
scans, wall time on the controller (request to judged DriftReport) and the time each helper
spent on its host. Every scan must come back clean, or the run fails. Hosts share this
machine's cores (a real fleet has its own per host), so the wall time here is an upper
bound for the host-side part. Hosts, processes and temp dirs are removed at the end.

Run (root, needs namespaces):
  .venv/bin/python benchmarks/fleet_drift.py [--hosts 100] [--per-host 1] [--files 1000] [--repeats 5]
"""

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchtools import loadavg_now, machine, write_doc_section  # noqa: E402

from shipyard.drift.baseline import RACY_SECONDS  # noqa: E402
from support.fleet_drift_scene import Scene  # noqa: E402
from support.netns_hosts import NetnsFleet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fleet_drift.json"
DOC = ROOT / "docs" / "benchmarks.md"
GOAL_METADATA_100 = 5.0


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def scans(scene: Scene, mode: str, repeats: int) -> dict[str, Any]:
    walls, helper_max, helper_median, files, hashed = [], [], [], 0, 0
    for _ in range(repeats):
        began = time.perf_counter()
        report = await scene.scan(mode)   # type: ignore[arg-type]
        walls.append(time.perf_counter() - began)
        if not report.clean:
            raise SystemExit(f"a {mode} scan found drift on an untouched fleet: "
                             + "; ".join(f.detail for f in report.findings[:5]))
        per_host = [t.helper_seconds or 0.0 for t in scene.scanner.last_timings.values()]
        helper_max.append(max(per_host))
        helper_median.append(statistics.median(per_host))
        files, hashed = report.files_checked, report.bytes_hashed
    return {"wall_ms_median": ms(statistics.median(walls)), "wall_ms_min": ms(min(walls)),
            "wall_ms_max": ms(max(walls)), "helper_ms_median_host": ms(statistics.median(helper_median)),
            "helper_ms_slowest_host": ms(statistics.median(helper_max)), "files_checked": files,
            "bytes_hashed": hashed}


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_before = loadavg_now()
    began = time.perf_counter()
    with NetnsFleet(args.hosts) as fleet:
        up = time.perf_counter() - began
        scene = Scene(fleet, tmp)
        try:
            began = time.perf_counter()
            await scene.deploy(per_host=args.per_host, extra_files=args.files)
            deployed = time.perf_counter() - began
            scene.write_edge_config()
            await asyncio.sleep(RACY_SECONDS + 0.3)
            began = time.perf_counter()
            first = await scene.scan("metadata")
            warm_up = time.perf_counter() - began
            if not first.clean:
                raise SystemExit("the warm-up scan found drift: " + "; ".join(f.detail for f in first.findings[:5]))
            metadata = await scans(scene, "metadata", args.repeats)
            full = await scans(scene, "full", args.repeats)
        finally:
            await scene.close()
    return {
        "benchmark": "fleet_drift", "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "load_before": load_before, "load_after": loadavg_now(),
        "hosts": args.hosts, "instances_per_host": args.per_host, "tree_files": args.files + 2,
        "repeats": args.repeats, "fleet_up_s": round(up, 2), "deploy_s": round(deployed, 2),
        "warm_up_scan_ms": ms(warm_up), "metadata": metadata, "full": full,
        "goal_metadata_100_hosts_s": GOAL_METADATA_100,
    }


def table(res: dict[str, Any]) -> str:
    m, f = res["metadata"], res["full"]
    rows = [
        f"Fleet drift scan (`benchmarks/fleet_drift.py`), {res['at']}: {res['hosts']} namespace hosts with sshd on "
        f"this machine ({res['machine']['nproc']} cores, {res['machine']['cpu_model']}, load "
        f"{res['load_before']} before, {res['load_after']} after; other sessions were running tests), "
        f"{res['instances_per_host']} instance(s) per host, image tree of {res['tree_files']} files, one HAProxy "
        f"config per host; {res['repeats']} scans each, every one clean.",
        "",
        "| pass | wall, all hosts (median) | min - max | helper time on a host (median) | slowest host "
        "| files checked | bytes re-hashed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("metadata", m), ("full re-hash", f)):
        rows.append(f"| {name} | {r['wall_ms_median']} ms | {r['wall_ms_min']} - {r['wall_ms_max']} ms | "
                    f"{r['helper_ms_median_host']} ms | {r['helper_ms_slowest_host']} ms | {r['files_checked']:,} | "
                    f"{r['bytes_hashed']:,} |")
    rows += ["", f"Hosts up in {res['fleet_up_s']} s, the service deployed on all in {res['deploy_s']} s, first scan "
             f"(opens one scan helper per host) {res['warm_up_scan_ms']} ms. Goal: 100 hosts scanned (metadata) in "
             f"<= {res['goal_metadata_100_hosts_s']:g} s."]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--per-host", type=int, default=1)
    parser.add_argument("--files", type=int, default=1000, help="extra files in the image tree")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-drift-"))
    try:
        res = asyncio.run(measure(args, tmp))
    finally:
        for d, _dirs, _files in os.walk(tmp):   # read-only trees
            os.chmod(d, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    body = table(res)
    print(body)
    print(f"\nJSON: {RESULTS}", file=sys.stderr)
    if args.doc:
        write_doc_section(DOC, "fleet_drift", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
