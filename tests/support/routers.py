"""Finding the data plane of a daemon under test, whichever router kind serves it."""

from __future__ import annotations

import os
from pathlib import Path


def router_pid(state_dir: Path, kind: str = "embedded") -> int:
    """The router process of the daemon on `state_dir`: the embedded proxy, or HAProxy's master."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            ours = str(state_dir).encode() in b" ".join(cmd)
            if kind == "embedded" and ours and b"shipyard.router.dataplane.proxy" in cmd:
                return int(entry)
            if kind == "haproxy" and ours and cmd[0].endswith(b"haproxy") and b"-W" in cmd and ppid != 0:
                try:
                    parent = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    parent = []
                if not (parent and parent[0].endswith(b"haproxy")):   # the master, not its worker
                    return int(entry)
    raise AssertionError("no router process found")


def haproxy_worker_pid(state_dir: Path) -> int:
    """The worker of the daemon's HAProxy: a reload replaces it, so an unchanged pid is no reload."""
    master = router_pid(state_dir, "haproxy")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == master:
                return int(entry)
    raise AssertionError(f"HAProxy master {master} has no worker")
