"""What the namespace hosts of tests/support/netns_hosts.py leave on the machine, found by
name prefix and owner pid, and removed: at a fleet's close, and by the sweeper for runs that
died without closing (a SIGKILLed CI job)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PREFIX = "synh"
"""Every bridge, veth, netns and temp dir made starts with it, then the owner's pid in base 36."""
_NAME = re.compile(rf"^{PREFIX}([0-9a-z]+)-([0-9a-z]+)")


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def ip_batch(lines: list[str]) -> None:
    """One `ip` process for many commands: 100 hosts come up without 500 forks."""
    if lines:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, check=True)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.02)


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no resources; its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def leftovers(owner_alive: bool | None = None, owner: int | None = None) -> dict[str, list[str]]:
    """Namespaces, links, temp dirs and processes made by this module (optionally only those
    of a dead owner, or of one owner pid)."""
    def wanted(name: str) -> bool:
        m = _NAME.match(name)
        if not m:
            return False
        pid = int(m.group(1), 36)
        if owner is not None and pid != owner:
            return False
        return owner_alive is None or _pid_alive(pid) == owner_alive
    netns = [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = [line.split(":")[1].strip().split("@")[0]
             for line in ip("-o", "link", "show", check=False).stdout.splitlines()]
    tmp = Path(tempfile.gettempdir())
    dirs = [str(p) for p in tmp.glob(f"{PREFIX}*") if p.is_dir() and wanted(p.name)]
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            cmd = cmdline(int(entry))
            m = re.search(rf"{re.escape(str(tmp))}/({PREFIX}[0-9a-z]+-[0-9a-z]+)", cmd)
            if m and wanted(m.group(1)) and running(int(entry)):
                procs.append(entry)
    return {"netns": [n for n in netns if wanted(n)], "links": [n for n in links if wanted(n)],
            "dirs": dirs, "processes": procs}


def sweep_stale() -> dict[str, list[str]]:
    """Remove what runs that died without cleaning up left behind; returns what it removed."""
    found = leftovers(owner_alive=False)
    remove(found)
    return found


def remove(found: dict[str, list[str]]) -> None:
    pids = [int(p) for p in found["processes"]]
    for ns in found["netns"]:
        pids += [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]
    kill_pids(pids)
    ip_batch([f"netns del {ns}" for ns in found["netns"]])
    for link in found["links"]:
        ip("link", "del", link, check=False)
    for d in found["dirs"]:
        shutil.rmtree(d, ignore_errors=True)


def made_by(token: str) -> dict[str, list[str]]:
    """What one fleet made (run 1's token is a prefix of run 10's: the next character decides)."""
    def owned(name: str) -> bool:
        name = Path(name).name
        return name == token or (name.startswith(token) and name[len(token)] in "v-")
    found = leftovers()
    return {"netns": [n for n in found["netns"] if owned(n)], "links": [n for n in found["links"] if owned(n)],
            "dirs": [d for d in found["dirs"] if owned(d)],
            "processes": [p for p in found["processes"] if f"/{token}-" in cmdline(int(p))]}
