#!/usr/bin/env python3
"""Drift scan benchmark: how fast does shipyard notice a changed file in an image tree?

An image of 10,000 files / 200 MiB is built through ImageStore.build from a generated
context and materialised as its read-only tree. Measured on that tree:
(a) the metadata pass (list + stat every entry, compare with the manifest and the stat
baseline, hash nothing unchanged) - goal <= 1 s;
(b) the full pass (re-hash every file) in MB/s - goal >= 500 MB/s - next to `sha256sum`
over the same files in the same run (one process, and one per core);
(c) a metadata pass after `touch` of 1 % of the files and one edited file: the edit must be
found, the touches re-hashed and not reported.
Warm = files in the page cache; cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`,
when this machine allows it (it needs root outside a container's read-only /proc/sys).
The temporary state dir is removed at the end, also on failure or Ctrl-C.
Run: .venv/bin/python benchmarks/drift_scan.py [--write-doc] [--quick]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchtools import cpu_times, cpu_use, machine, write_doc_section

from shipyard.drift import BaselineStore, scan_tree
from shipyard.drift.baseline import RACY_SECONDS
from shipyard.drift.hashing import workers
from shipyard.drift.report import Mode
from shipyard.images import BuildInput, ImageStore
from shipyard.images.build import remove_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "drift_scan.json"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "drift"
MiB = 1 << 20
GOAL_METADATA_S = 1.0
GOAL_FULL_MBPS = 500.0
SHA256SUM = "/usr/bin/sha256sum"


def file_sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """A source-tree-like mix: mostly small files, some medium, a few large; summing to ``total``."""
    raw = [rng.lognormvariate(8.5, 1.4) for _ in range(count)]
    for i in rng.sample(range(count), max(1, count // 1000)):
        raw[i] *= 200  # a few large assets
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    sizes[0] += total - sum(sizes)
    return sizes


def generate_context(ctx: Path, count: int, total: int, seed: int = 5) -> None:
    rng = random.Random(seed)
    per_dir = 100
    for i, size in enumerate(file_sizes(count, total, rng)):
        d = ctx / f"pkg{i // per_dir // 10:02d}" / f"mod{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"f{i:05d}.dat"
        path.write_bytes(rng.randbytes(size))
        if i % 50 == 0:
            os.chmod(path, 0o755)


def drop_caches() -> str | None:
    """None when the page cache was dropped, else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"/proc/sys/vm/drop_caches: {exc.strerror or exc}"
    return None


def timed_scan(tree: Path, manifest: dict[str, Any], image_id: str, mode: Mode,
               baselines: BaselineStore) -> dict[str, Any]:
    res = scan_tree(tree, manifest, image_id, mode, baselines)
    return {"seconds": res.seconds, "files_checked": res.files_checked, "files_hashed": res.files_hashed,
            "bytes_hashed": res.bytes_hashed, "mb_per_s": res.bytes_hashed / 1e6 / res.seconds,
            "clean": res.clean, "content": sorted(res.content), "metadata_only": len(res.metadata_only)}


def sha256sum_run(files: list[str], procs: int) -> dict[str, Any]:
    """sha256sum over ``files`` split into ``procs`` concurrent processes; checks it read them all."""
    shares = [files[i::procs] for i in range(procs)]
    t0 = time.perf_counter()
    running = [subprocess.Popen([SHA256SUM, "--", *share], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for share in shares]
    lines = 0
    for p in running:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"sha256sum failed: {err.decode()[-500:]}")
        lines += out.count(b"\n")
    seconds = time.perf_counter() - t0
    if lines != len(files):
        raise RuntimeError(f"sha256sum printed {lines} lines for {len(files)} files")
    return {"seconds": seconds}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    count, total = (1000, 20 * MiB) if args.quick else (args.files, args.mib * MiB)
    ctx = workdir / "context"
    t0 = time.perf_counter()
    generate_context(ctx, count, total)
    store = ImageStore(workdir / "images")
    image = await store.build(BuildInput(service="bench", context=ctx, run_command=["true"]))
    tree = store.materialize(image.id)
    prepared = time.perf_counter() - t0
    shutil.rmtree(ctx)
    manifest = image.manifest
    files = [str(tree / e["path"]) for e in manifest["files"] if e["type"] == "file"]
    size = sum(e["size"] for e in manifest["files"] if e["type"] == "file")
    print(f"image {image.short_id}: {len(files)} files, {size / MiB:.0f} MiB, prepared in {prepared:.1f}s",
          file=sys.stderr)
    baselines = BaselineStore(workdir / "baselines")
    time.sleep(max(0.0, RACY_SECONDS - 2.0) + 0.1)  # with the 2 s sample below: past the racy window
    load_before = os.getloadavg()[0]
    idle0 = cpu_times()
    time.sleep(2.0)  # how busy the machine is without us: the figures below share it
    busy_before = cpu_use(idle0, cpu_times())
    cpu0 = cpu_times()

    first = timed_scan(tree, manifest, image.id, "full", baselines)  # also writes the baseline
    full = [timed_scan(tree, manifest, image.id, "full", baselines) for _ in range(args.repeat)]
    metadata = [timed_scan(tree, manifest, image.id, "metadata", baselines) for _ in range(args.repeat)]
    sums1 = [sha256sum_run(files, 1) for _ in range(args.repeat)]
    sumsn = [sha256sum_run(files, workers()) for _ in range(args.repeat)]
    for r in sums1 + sumsn:
        r["mb_per_s"] = size / 1e6 / r["seconds"]
    assert all(r["clean"] and r["files_hashed"] == len(files) for r in full), "full pass is not clean"
    assert all(r["clean"] and r["files_hashed"] == 0 for r in metadata), "metadata pass hashed or found drift"

    # (c) touch 1 % of the files and edit one: found by the metadata pass, touches not reported
    rng = random.Random(7)
    touched = rng.sample(files, max(1, len(files) // 100))
    for path in touched:
        os.utime(path)
    edited = next(p for p in files if p not in touched)
    os.chmod(edited, 0o644)
    with open(edited, "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 1]))
    os.chmod(edited, 0o444)
    after_edit = timed_scan(tree, manifest, image.id, "metadata", baselines)
    rel_edited = os.path.relpath(edited, tree)
    assert after_edit["content"] == [rel_edited], f"edit not found: {after_edit['content']}"
    assert after_edit["metadata_only"] == len(touched), "touched files reported wrongly"
    cpu = cpu_use(cpu0, cpu_times())

    cold: dict[str, Any] = {}
    why_not = drop_caches()
    if why_not is None:
        cold["metadata"] = timed_scan(tree, manifest, image.id, "metadata", baselines)
        drop_caches()
        cold["full"] = timed_scan(tree, manifest, image.id, "full", baselines)
        drop_caches()
        cold["sha256sum_1"] = sha256sum_run(files, 1)
        drop_caches()
        cold["sha256sum_n"] = sha256sum_run(files, workers())
        for key in ("sha256sum_1", "sha256sum_n"):
            cold[key]["mb_per_s"] = size / 1e6 / cold[key]["seconds"]
    else:
        cold["skipped"] = why_not

    full_mbps = median_of(full, "mb_per_s")
    meta_s = median_of(metadata, "seconds")
    return {
        "benchmark": "drift_scan",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**machine(), "loadavg_1min_before": round(load_before, 2),
                    "cpu_busy_before": round(busy_before["busy"], 3)},
        "options": {"files": len(files), "bytes": size, "repeat": args.repeat, "quick": args.quick,
                    "hash_workers": workers()},
        "goals": {"metadata_pass_s": GOAL_METADATA_S, "full_pass_mb_per_s": GOAL_FULL_MBPS},
        "prepare_seconds": prepared,
        "first_full_pass": first,
        "warm": {
            "metadata": metadata, "full": full, "sha256sum_1": sums1, "sha256sum_n": sumsn,
            "metadata_median_s": meta_s, "full_median_mb_per_s": full_mbps,
            "sha256sum_1_median_mb_per_s": median_of(sums1, "mb_per_s"),
            "sha256sum_n_median_mb_per_s": median_of(sumsn, "mb_per_s"),
        },
        "after_touch_and_edit": {**after_edit, "touched": len(touched), "edited": rel_edited},
        "cold": cold,
        "cpu_during_warm_runs": cpu,
        "goals_met": {"metadata": meta_s <= GOAL_METADATA_S, "full": full_mbps >= GOAL_FULL_MBPS},
    }


def doc_body(r: dict[str, Any]) -> str:
    m, w, o, c = r["machine"], r["warm"], r["options"], r["cold"]
    t = r["after_touch_and_edit"]
    n = o["hash_workers"]
    ratio1 = w["full_median_mb_per_s"] / w["sha256sum_1_median_mb_per_s"]
    ration = w["full_median_mb_per_s"] / w["sha256sum_n_median_mb_per_s"]
    rows = [
        "| figure | warm (page cache) | cold | goal |",
        "|---|---|---|---|",
        f"| metadata pass, nothing changed (median of {o['repeat']}) | {w['metadata_median_s'] * 1000:.0f} ms | "
        + (f"{c['metadata']['seconds'] * 1000:.0f} ms" if "metadata" in c else "n/a")
        + f" | <= {GOAL_METADATA_S:g} s |",
        f"| metadata pass after `touch` of {t['touched']} files + 1 edited (edit found, touches re-hashed, "
        f"not reported) | {t['seconds'] * 1000:.0f} ms | | |",
        f"| full pass, re-hash all ({n} hashing threads) | {w['full_median_mb_per_s']:.0f} MB/s | "
        + (f"{c['full']['mb_per_s']:.0f} MB/s" if "full" in c else "n/a") + f" | >= {GOAL_FULL_MBPS:g} MB/s |",
        f"| `sha256sum`, 1 process | {w['sha256sum_1_median_mb_per_s']:.0f} MB/s | "
        + (f"{c['sha256sum_1']['mb_per_s']:.0f} MB/s" if "sha256sum_1" in c else "n/a") + " | |",
        f"| `sha256sum`, {n} processes | {w['sha256sum_n_median_mb_per_s']:.0f} MB/s | "
        + (f"{c['sha256sum_n']['mb_per_s']:.0f} MB/s" if "sha256sum_n" in c else "n/a") + " | |",
        f"| full pass / `sha256sum` (1 process; {n} processes), warm | {ratio1:.1f}x; {ration:.1f}x | | |",
    ]
    cold_note = ("" if "skipped" not in c else
                 f" Cold figures were not taken: dropping the page cache failed ({c['skipped']}).")
    goals = ", ".join(k for k, ok in r["goals_met"].items() if not ok)
    return "\n".join([
        "## Drift scan (the Drift test)",
        "",
        "```",
        ".venv/bin/python benchmarks/drift_scan.py --write-doc      # about a minute; --quick: smoke run",
        "```",
        "",
        f"An image of {o['files']:,} files / {o['bytes'] / MiB:.0f} MiB (a generated tree: mostly small files, "
        "a few large ones, 2 % executable) is built through `ImageStore.build` and materialised. The "
        "**metadata pass** lists the tree and compares each entry's type, permissions and size with the "
        "manifest and its (size, mtime, ctime, inode, mode) with the baseline recorded when the file was "
        "last hashed; only files whose stat moved are re-hashed. The **full pass** re-hashes every file "
        f"(1 MiB reads into a reused buffer, {n} threads: sha256 releases the GIL). `sha256sum` "
        "(GNU coreutils, built without OpenSSL) reads the same files in the same run, once as one process and "
        f"once split over {n} concurrent processes. Warm runs are medians of {o['repeat']}.",
        "",
        f"Run of {r['date']} on {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']} "
        f"(1-min load average before the run: {m['loadavg_1min_before']}; machine CPU "
        f"{m['cpu_busy_before'] * 100:.0f}% busy in the 2 s before the run, "
        f"{r['cpu_during_warm_runs']['busy'] * 100:.0f}% during the warm runs).{cold_note}",
        "",
        *rows,
        "",
        "Goals: " + ("all met." if not goals else f"NOT met: {goals}."),
    ])


def write_doc(body: str) -> None:
    """Append our markers at the end if absent, then rewrite only what lies between them."""
    text = DOC.read_text()
    if f"<!-- {SECTION}:begin -->" not in text:
        DOC.write_text(text.rstrip() + f"\n\n<!-- {SECTION}:begin -->\n<!-- {SECTION}:end -->\n")
    write_doc_section(DOC, SECTION, body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1,000 files / 20 MiB, JSON to the temp dir")
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sy-drift-bench-"))
    try:
        result = asyncio.run(run(args, workdir))
    finally:
        remove_dir(workdir)
    out = Path(tempfile.gettempdir()) / "drift_scan.quick.json" if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    body = doc_body(result)
    print(body)
    print(f"\nJSON: {out}", file=sys.stderr)
    if args.write_doc and not args.quick:
        write_doc(body)
    return 0 if all(result["goals_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
