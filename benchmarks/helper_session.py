#!/usr/bin/env python3
"""Helper sessions over real SSH on namespace hosts (tests/support/netns_hosts.py): what it
costs to install the helper on every host and to start it, zipapp against the unpacked,
host-compiled install that HelperSession runs.

Measured, on 5 hosts: the bundle's size and bytes sent per host; installing on all 5 at once
(probe + send + verify + unpack + compile); a second controller's check that sends nothing;
then on one host, alternating, 10 helper starts to first reply (`hello`) and 5 instance
starts (through the supervisor, which runs from the same install) for each of the two
layouts. Hosts, processes and temp dirs are removed at the end.
Run (root, needs namespaces): .venv/bin/python benchmarks/helper_session.py [--write-doc]"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "fleet"))

from benchtools import machine, write_doc_section  # noqa: E402
from ssh_support import options_for, targets  # noqa: E402

from shipyard.fleet.remote import bundle  # noqa: E402
from shipyard.fleet.remote.client import HelperClient  # noqa: E402
from shipyard.runtime.ssh.connections import HostConnection, SshConnections  # noqa: E402
from shipyard.runtime.ssh.helper_session import HelperSession  # noqa: E402
from support.netns_hosts import NetnsFleet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "helper_session.json"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "helper-session"


async def start_once(host: HostConnection, argv: list[str]) -> tuple[float, HelperClient, Any]:
    began = time.perf_counter()
    proc = await host.open_process(argv)
    client = HelperClient(proc.stdout, proc.stdin)
    await client.hello()
    return time.perf_counter() - began, client, proc


async def measure(fleet: NetnsFleet) -> dict[str, Any]:
    sha, data = bundle.build()
    async with SshConnections(options_for(fleet)) as pool:
        await pool.connect_all(targets(fleet))
        sessions = [HelperSession(pool.host(t)) for t in targets(fleet)]
        began = time.perf_counter()
        await asyncio.gather(*(s.ensure_installed() for s in sessions))
        install_s = time.perf_counter() - began
        sent = [s.bytes_sent for s in sessions]
    async with SshConnections(options_for(fleet)) as pool:
        await pool.connect_all(targets(fleet))
        again = [HelperSession(pool.host(t)) for t in targets(fleet)]
        began = time.perf_counter()
        await asyncio.gather(*(s.ensure_installed() for s in again))
        check_s = time.perf_counter() - began
        host = pool.host(targets(fleet)[0])
        layouts = {"zipapp": ["python3", "-I", bundle.remote_path(sha)], "unpacked": bundle.launch_argv(sha)}
        starts: dict[str, list[float]] = {k: [] for k in layouts}
        instance_starts: dict[str, list[float]] = {k: [] for k in layouts}
        for i in range(10):
            for name, argv in layouts.items():
                seconds, client, proc = await start_once(host, argv)
                starts[name].append(seconds)
                if i < 5:
                    t0 = time.perf_counter()
                    st = await client.start(f"bench-{name}-{i}", ["sleep", "60"], {"PATH": "/usr/bin:/bin"}, "/")
                    instance_starts[name].append(time.perf_counter() - t0)
                    await client.stop(st.pid, st.start_time, timeout=2)
                await client.aclose()
                await proc.close()
    ms = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    return {
        "bundle_bytes": len(data), "hosts": len(fleet.hosts), "bytes_sent_per_host": sent,
        "install_all_s": round(install_s, 3), "second_check_all_s": round(check_s, 3),
        "second_check_bytes_sent": sum(s.bytes_sent for s in again),
        "helper_start_ms": {k: ms(v) for k, v in starts.items()},
        "instance_start_ms": {k: ms(v) for k, v in instance_starts.items()},
    }


def table(res: dict[str, Any]) -> str:
    r = res["results"]
    return "\n".join([
        "```", ".venv/bin/python benchmarks/helper_session.py --write-doc      # about 10 s, as root", "```", "",
        f"The remote helper over real SSH on {r['hosts']} namespace hosts (one sshd each), "
        f"{res['machine']['nproc']} cores, load {res['load']}.", "",
        "| figure | value |", "|---|---|",
        f"| bundle size / bytes sent per host on first install | {r['bundle_bytes']:,} / {r['bytes_sent_per_host'][0]:,} |",
        f"| install on all {r['hosts']} at once (probe, send, verify, unpack, compile) | {r['install_all_s'] * 1000:.0f} ms |",
        f"| a second controller's check on all {r['hosts']} (bytes sent: {r['second_check_bytes_sent']}) | "
        f"{r['second_check_all_s'] * 1000:.0f} ms |",
        f"| helper start to first reply over SSH, zipapp / unpacked (median of 10) | "
        f"{r['helper_start_ms']['zipapp']} / {r['helper_start_ms']['unpacked']} ms |",
        f"| instance start through the supervisor, zipapp / unpacked (median of 5) | "
        f"{r['instance_start_ms']['zipapp']} / {r['instance_start_ms']['unpacked']} ms |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    with NetnsFleet(5) as fleet:
        results = asyncio.run(measure(fleet))
        for h in fleet.hosts:   # read-only installs: let the clean-up remove them
            for d in [h.dir, *h.dir.rglob("*")]:
                if d.is_dir() and not d.is_symlink():
                    d.chmod(0o755)
    res = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
           "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["results"], indent=2))
    print(table(res))
    if args.write_doc:
        write_doc_section(DOC, SECTION, table(res))


if __name__ == "__main__":
    main()
