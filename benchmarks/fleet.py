#!/usr/bin/env python3
"""The example shop on N namespace hosts (tests/support/netns_hosts.py: each its own sshd)
through a real daemon and its edge on this machine, under steady user traffic: the time to
deploy a new release to every host (blue-green, batches of fleet.batch.max_parallel), the
bytes that release added to a host's object store, the rollback across every host (the
`POST rollback` call, and when every new request is on the old release), failed requests,
and a host killed: the time until its instance runs on another host and the requests that
failed meanwhile.

Hosts share this machine's 2 cores with the controller, the edge, the load generator and
(here) other sessions running tests: a real fleet has its own cores per host, so these are
upper bounds. Everything started here (hosts, daemon, instances, temp dirs) is removed at
the end, also on failure.

Run (root, needs namespaces):
  .venv/bin/python benchmarks/fleet.py [--hosts 100] [--batch 25%] [--router embedded|haproxy] [--doc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchtools import loadavg_now, machine, write_doc_section  # noqa: E402

from shipyard.client import AsyncApiClient  # noqa: E402
from shipyard.devtools.daemonproc import DaemonProcess  # noqa: E402
from shipyard.devtools.demo import example_dir, free_port  # noqa: E402
from shipyard.devtools.loadgen import Traffic  # noqa: E402
from support.netns_hosts import NetnsFleet  # noqa: E402
from support.procs import kill_everything_under  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fleet.json"
DOC = ROOT / "docs" / "benchmarks.md"
COMMAND = ["python3", "-m", "shop", "--host", "${HOST}", "--port", "${PORT}"]
GOAL_DEPLOY_S = 30.0
GOAL_ROLLBACK_MS = 100.0


def spec(state: Path, listen: str, fleet: NetnsFleet, version: str, args: argparse.Namespace) -> Path:
    """The example shop's spec for `version`, on every host (total = hosts, at most 2 a host)."""
    source = example_dir() / f"{version}.yaml"
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    doc["listen"] = listen
    doc["build"]["context"] = str((source.parent / doc["build"]["context"]).resolve())
    doc.pop("database", None)
    doc.pop("replicas", None)
    doc["health"]["start_timeout"] = "60s"     # the example's probe interval (500 ms) kept: 2 probes/s per instance
    doc["run"]["command"] = COMMAND
    doc["router"] = {"kind": args.router}
    doc["fleet"] = {"hosts": [{"name": h.name, "address": h.address} for h in fleet.hosts],
                    "ssh": {"user": fleet.user, "identity": str(fleet.client_key),
                            "known_hosts": str(fleet.known_hosts)},
                    "placement": {"total": len(fleet.hosts), "max_per_host": 2},
                    "batch": {"max_parallel": args.batch}, "lost_after": args.lost_after}
    path = state / "specs" / f"{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def store_bytes(fleet: NetnsFleet) -> list[int]:
    """Per host, the bytes in its helper's content-addressed object store."""
    sizes = []
    for h in fleet.hosts:
        sizes.append(sum(f.stat().st_size for d in Path(h.dir).rglob("objects") if d.is_dir()
                         for f in d.rglob("*") if f.is_file()))
    return sizes


async def live(api: AsyncApiClient) -> list[dict[str, Any]]:
    status = await api.get("/v1/services/shop")
    return [i for i in status["slots"][status["live_slot"]]["instances"] if i["status"] == "healthy"]


async def deploy(api: AsyncApiClient, path: Path, timeout: float) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    r = (await api.post("/v1/deploy", {"spec_path": str(path)}))["rollout"]
    final = await api.wait_rollout(r["id"], timeout)
    if final["phase"] != "succeeded":
        raise SystemExit(f"deploy of {path.name} {final['phase']}: {final.get('reason')}")
    return final, time.monotonic() - began


async def measure(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    load_before = loadavg_now()
    listen = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    with NetnsFleet(args.hosts) as fleet:
        up = time.monotonic() - began
        daemon = DaemonProcess(state).start()
        api = AsyncApiClient(daemon.paths, timeout=600)
        try:
            _, first = await deploy(api, spec(state, listen, fleet, "v1", args), 900)
            assert len(await live(api)) == args.hosts
            before = store_bytes(fleet)
            async with Traffic(f"http://{listen}", clients=8, pause=0.005) as traffic:
                await asyncio.sleep(1.0)
                t_v2 = time.monotonic()
                v2, deployed = await deploy(api, spec(state, listen, fleet, "v2", args), 900)
                v2_settle = traffic.settled_at("2", t_v2)
                shipped = [b - a for a, b in zip(before, store_bytes(fleet), strict=True)]
                await asyncio.sleep(1.0)
                t_rb = time.monotonic()
                rb = (await api.post("/v1/services/shop/rollback"))["rollout"]
                call = time.monotonic() - t_rb
                await asyncio.sleep(1.0)
                settle = traffic.settled_at("1", t_rb)
                if rb["phase"] != "succeeded":
                    raise SystemExit(f"rollback {rb['phase']}: {rb.get('reason')}")
                t_kill = time.monotonic()
                victim = fleet.hosts[len(fleet.hosts) // 2]
                fleet.kill_host(victim)
                replaced = None
                while time.monotonic() - t_kill < 120:
                    hosts = [i["host"] for i in await live(api)]
                    if len(hosts) == args.hosts and victim.address not in hosts:
                        replaced = time.monotonic() - t_kill
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
                failed_kill = len(traffic.failures(since=t_kill))
            samples = len(traffic.samples)
            failed_before_kill = len([s for s in traffic.failures() if s.started < t_kill])
            batches = [e for e in (await api.get(f"/v1/rollouts/{v2['id']}"))["events"] if e["kind"] == "fleet.batch"]
            rb_events = (await api.get(f"/v1/rollouts/{rb['id']}"))["events"]
            swap = [e["data"]["seconds"] for e in rb_events if e["kind"] == "traffic.switched"]
        finally:
            await api.aclose()
            daemon.stop()
            kill_everything_under(state)
    return {
        "benchmark": "fleet", "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "load_before": load_before, "load_after": loadavg_now(), "hosts": args.hosts, "router": args.router,
        "batch_max_parallel": args.batch, "batches": len(batches), "lost_after": args.lost_after,
        "fleet_up_s": round(up, 2), "first_deploy_s": round(first, 2), "deploy_s": round(deployed, 2),
        "deploy_traffic_on_v2_after_s": round(v2_settle, 2) if v2_settle is not None else None,
        "bytes_shipped_per_host_max": max(shipped), "bytes_shipped_per_host_min": min(shipped),
        "rollback_call_ms": round(call * 1000, 1),
        "rollback_table_swap_ms": round(swap[0] * 1000, 1) if swap else None,
        "rollback_all_new_requests_old_ms": round(settle * 1000, 1) if settle is not None else None,
        "failed_requests_deploy_and_rollback": failed_before_kill, "requests": samples,
        "host_killed_replaced_s": round(replaced, 2) if replaced is not None else None,
        "failed_requests_after_kill": failed_kill,
        "goal_deploy_s": GOAL_DEPLOY_S, "goal_rollback_ms": GOAL_ROLLBACK_MS,
    }


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    return "\n".join([
        f"Fleet (`benchmarks/fleet.py`), {res['at']}: the example shop on {res['hosts']} namespace hosts with sshd on "
        f"this machine ({m['nproc']} cores, {m['cpu_model']}; load {res['load_before']} before, {res['load_after']} "
        f"after: other sessions were running tests), one instance per host, edge `{res['router']}` on this machine, "
        f"8 clients of steady traffic through it ({res['requests']:,} requests in all).",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
        f"| deploy v2 to all hosts (blue-green, {res['batches']} batches of {res['batch_max_parallel']}) "
        f"| {res['deploy_s']} s | <= {res['goal_deploy_s']:g} s |",
        f"| bytes v2 added to a host's object store | {res['bytes_shipped_per_host_min']:,} - "
        f"{res['bytes_shipped_per_host_max']:,} | only what changed |",
        f"| rollback: the API call (of it, the table swap at the edge) | {res['rollback_call_ms']} ms "
        f"({res['rollback_table_swap_ms']} ms) | |",
        f"| rollback: every new request on v1 after | {res['rollback_all_new_requests_old_ms']} ms "
        f"| <= {res['goal_rollback_ms']:g} ms |",
        f"| failed requests, deploy + rollback | {res['failed_requests_deploy_and_rollback']} | 0 |",
        f"| a host killed: its instance runs on another host after (lost_after {res['lost_after']}) "
        f"| {res['host_killed_replaced_s']} s | |",
        f"| failed requests from the kill on | {res['failed_requests_after_kill']} | those in flight on it |",
        "",
        f"Hosts up in {res['fleet_up_s']} s; the first release (image shipped to every host) took "
        f"{res['first_deploy_s']} s. No peer is timed beside it: issue 15 names Kamal and pyinfra as models, "
        "not as a figure to compare with, and neither is installed here.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--batch", default="25%", help="fleet.batch.max_parallel")
    parser.add_argument("--router", default="embedded", choices=("embedded", "haproxy"))
    parser.add_argument("--lost-after", default="5s")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="sy-fleet-"))
    try:
        res = asyncio.run(measure(args, state))
    finally:
        kill_everything_under(state)
        shutil.rmtree(state, ignore_errors=True)
    suffix = "" if args.router == "embedded" else f".{args.router}"
    out = RESULTS.with_name(f"fleet{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    body = table(res)
    print(body)
    print(f"\nJSON: {out}", file=sys.stderr)
    if args.doc:
        write_doc_section(DOC, f"fleet{suffix.replace('.', '-')}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
