#!/usr/bin/env python3
"""SshRuntime on one namespace host (tests/support/netns_hosts.py): what the Runtime port
costs over SSH. Measured: the first start (helper installed, image shipped and
materialised, tree verified, port, supervisor), later starts of the same image (nothing
travels), one batched status poll of the host's instances (what keeps is_alive fresh), an
is_alive call (a cache read), and a graceful stop. Hosts, processes and temp dirs are
removed at the end.
Run (root, needs namespaces): .venv/bin/python benchmarks/ssh_runtime.py [--starts N]"""

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchtools import machine  # noqa: E402

from support.netns_hosts import NetnsFleet  # noqa: E402
from support.runtime_sides import SshSide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ssh_runtime.json"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def measure(fleet: NetnsFleet, tmp: Path, starts: int) -> dict[str, Any]:
    side = await SshSide(tmp, fleet).open()
    try:
        tree = tmp / "tree"
        shutil.copytree(ROOT / "examples" / "shop" / "app", tree, ignore=shutil.ignore_patterns("__pycache__"))
        (tree / "release.toml").write_text('version = "1"\ngreeting = "hi"\n')
        cmd = ["python3", "-m", "shop", "--host", side.address, "--port", "${PORT}"]
        times, instances = [], []
        for i in range(starts):
            launch = await side.launch(tree, cmd, name=f"shop-{i}")
            began = time.perf_counter()
            instances.append(await side.start(launch))
            times.append(time.perf_counter() - began)
        polls = []
        for _ in range(20):
            began = time.perf_counter()
            await side.runtime.refresh()
            polls.append(time.perf_counter() - began)
        began = time.perf_counter()
        for inst in instances:
            side.runtime.is_alive(inst)
        is_alive_us = (time.perf_counter() - began) / len(instances) * 1e6
        stops = []
        for inst in instances:
            began = time.perf_counter()
            await side.runtime.stop(inst, 5)
            stops.append(time.perf_counter() - began)
        return {"first_start_ms": ms(times[0]), "later_start_ms_median": ms(statistics.median(times[1:])),
                "status_poll_ms_median": ms(statistics.median(polls)), "instances_polled": len(instances),
                "is_alive_us": round(is_alive_us, 2), "stop_ms_median": ms(statistics.median(stops))}
    finally:
        await side.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sybench"))
    try:
        with NetnsFleet(1) as fleet:
            results = asyncio.run(measure(fleet, tmp, max(2, args.starts)))
    finally:
        for d, _dirs, _files in os.walk(tmp):
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
           "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
