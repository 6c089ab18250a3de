"""Cleanup for tests that start real processes: whatever runs from, in or about a
directory (daemon, routers, instances, build steps) is killed with its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def processes_under(root: Path) -> list[int]:
    root_s = str(root.resolve())
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if root_s in cmd or cwd.startswith(root_s):
            found.append(pid)
    return found


def kill_everything_under(root: Path, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process group that has a member tied to `root`; returns the pids."""
    pids = processes_under(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        time.sleep(0.05)
    return pids


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
