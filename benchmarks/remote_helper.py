#!/usr/bin/env python3
"""Remote helper benchmark: what one host's helper costs and how fast it moves images, with
the real zipapp under the system python3 -I as a local subprocess (the SSH channel is left
out: its cost is the SSH runtime's figure).

Measured: the bundle's size; helper start to its first reply (median of 5 starts); a request
round trip (median of 200 hellos); `objects.missing` of 10,000 shas; one 64 MiB object put;
an image of 2,000 files x 4 KiB built by ImageStore.build and shipped by ship_image (all
objects, then a re-ship that sends none); its materialisation; a full and a metadata verify;
instance start through the supervisor (median of 10) and stopping those 10 at once; the RSS
of the helper and of one supervisor. The temp dir and every process are removed at the end.
Run: .venv/bin/python benchmarks/remote_helper.py [--write-doc]"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchtools import Children, machine, run_bounded, write_doc_section

from shipyard.drift.baseline import RACY_SECONDS
from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient
from shipyard.fleet.remote.transfer import ship_image
from shipyard.images import BuildInput, ImageStore

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "remote_helper.json"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "remote-helper"
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def timed(coro: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - t0


async def run(workdir: Path, children: Children) -> dict[str, Any]:
    sha, data = bundle.build()
    pyz = bundle.write(workdir / "helper")
    state = workdir / "state"
    load_before = os.getloadavg()[0]

    async def spawn() -> tuple[HelperClient, asyncio.subprocess.Process]:
        proc = await children.spawn([PYTHON, "-I", str(pyz), "--root", str(state)],
                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return HelperClient(proc.stdout, proc.stdin), proc   # type: ignore[arg-type]

    starts = []
    for _ in range(5):
        t0 = time.perf_counter()
        client, proc = await spawn()
        await client.hello()
        starts.append(time.perf_counter() - t0)
        await client.aclose()
        await proc.wait()
    client, proc = await spawn()
    rtts = []
    for _ in range(200):
        rtts.append((await timed(client.hello()))[1])
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10_000)]
    _, missing_s = await timed(client.missing(shas))
    blob = os.urandom(64 << 20)
    _, put_s = await timed(client.put(hashlib.sha256(blob).hexdigest(), blob))
    del blob

    ctx = workdir / "ctx"
    for i in range(2000):
        path = ctx / f"d{i % 40:02d}" / f"f{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
    images = ImageStore(workdir / "images")
    image = await images.build(BuildInput("bench", ctx, run_command=["true"]))
    shipped, ship_s = await timed(ship_image(client, images, image.id))
    await client.remove_tree(image.id)
    again, reship_s = await timed(ship_image(client, images, image.id))   # objects there: tree only
    time.sleep(RACY_SECONDS + 0.1)   # past the racy window, so the full pass records a baseline
    full, full_s = await timed(client.verify(image.id, "full"))
    meta, meta_s = await timed(client.verify(image.id, "metadata"))

    started, start_times = [], []
    for i in range(10):
        s, dt = await timed(client.start(f"i{i}", ["/bin/sleep", "60"], {}, str(workdir)))
        started.append(s)
        start_times.append(dt)
    helper_rss, supervisor_rss = rss_mib(proc.pid), rss_mib(parent_of(started[0].pid))
    stopped, stop_s = await timed(client.stop_many([(s.pid, s.start_time) for s in started], timeout=5))
    await client.aclose()
    await proc.wait()
    assert full.clean and meta.clean and all(s.state == "exited" for s in stopped)
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_1min_before": round(load_before, 2),
                    "host_python": PYTHON},
        "bundle": {"sha256": sha, "bytes": len(data)},
        "helper_start_to_hello_ms": round(statistics.median(starts) * 1000, 1),
        "request_round_trip_ms": round(statistics.median(rtts) * 1000, 3),
        "missing_10k_ms": round(missing_s * 1000, 1),
        "put_64mib_mib_per_s": round(64 / put_s, 1),
        "ship_2000_files": {"seconds": round(ship_s, 3), "objects_sent": shipped.objects_sent,
                            "bytes_sent": shipped.bytes_sent, "objects_per_s": round(shipped.objects_sent / ship_s)},
        "reship_materialise_only": {"seconds": round(reship_s, 3), "objects_sent": again.objects_sent},
        "verify_full_ms": round(full_s * 1000, 1), "verify_metadata_ms": round(meta_s * 1000, 1),
        "metadata_files_hashed": meta.files_hashed,
        "instance_start_p50_ms": round(statistics.median(start_times) * 1000, 1),
        "stop_10_at_once_ms": round(stop_s * 1000, 1),
        "rss_mib": {"helper": round(helper_rss, 1), "supervisor_per_instance": round(supervisor_rss, 1)},
    }


def table(r: dict[str, Any]) -> str:
    s, m = r["ship_2000_files"], r["machine"]
    rows = [
        ("bundle (zipapp, stored, deterministic)", f"{r['bundle']['bytes'] / 1024:.0f} KiB"),
        ("helper start to first reply (median of 5)", f"{r['helper_start_to_hello_ms']} ms"),
        ("request round trip over the pipes (median of 200)", f"{r['request_round_trip_ms']} ms"),
        ("`objects.missing` of 10,000 shas", f"{r['missing_10k_ms']} ms"),
        ("one 64 MiB object put (hashed on arrival)", f"{r['put_64mib_mib_per_s']} MiB/s"),
        ("image of 2,000 x 4 KiB files shipped (all objects + tree)",
         f"{s['seconds']} s ({s['objects_per_s']} objects/s, {s['bytes_sent'] / 1e6:.1f} MB)"),
        ("same image again: no object sent, tree materialised",
         f"{r['reship_materialise_only']['seconds']} s ({r['reship_materialise_only']['objects_sent']} sent)"),
        ("verify, full re-hash / metadata pass (2,000 files)",
         f"{r['verify_full_ms']} / {r['verify_metadata_ms']} ms"),
        ("instance start through its supervisor (median of 10)", f"{r['instance_start_p50_ms']} ms"),
        ("stop 10 instances at once (SIGTERM, exit codes recorded)", f"{r['stop_10_at_once_ms']} ms"),
        ("RSS: helper / supervisor per instance",
         f"{r['rss_mib']['helper']} / {r['rss_mib']['supervisor_per_instance']} MiB"),
    ]
    head = (f"Run of {r['at']} on {m['cpu_model']}, {m['nproc']} CPUs, Python {m['python']} (controller), "
            f"host python {r['machine']['host_python']} (1-min load average before the run: "
            f"{m['loadavg_1min_before']}).\n\n| figure | value |\n|---|---|\n")
    return head + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-doc", action="store_true", help=f"rewrite the {SECTION} section of {DOC}")
    args = parser.parse_args()
    result = run_bounded("sy-bench-remote", run)
    if isinstance(result, int):
        return result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    text = table(result)
    print(json.dumps(result, indent=1))
    print(text, file=sys.stderr)
    if args.write_doc:
        intro = ("```\n.venv/bin/python benchmarks/remote_helper.py --write-doc      # about 10 s\n```\n\n"
                 "The helper shipyard installs on each host (`fleet/remote/`), run as a host runs it "
                 "(`python3 -I <sha>.pyz`) but over a local subprocess's pipes instead of an SSH "
                 "channel.\n\n")
        write_doc_section(DOC, SECTION, intro + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
