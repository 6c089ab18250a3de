"""Facts about the host for ``hello`` (what ``shipyard hosts`` shows), its TCP listeners
(what the drift scan compares with the instances it expects, read as drift/listeners.py
reads them on one machine) and the files shipyard manages outside image trees (a host's
HAProxy configuration, say), hashed where they are."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

from shipyard.drift.listeners import listening_sockets, socket_owners
from shipyard.images.manifest import hash_file

from .protocol import BAD_REQUEST, IO_ERROR, OpError, require

PORT_ATTEMPTS = 64


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _boot_id() -> str | None:
    """Start times count from boot: after a reboot, (pid, start time) must not be trusted."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def facts(root: Path) -> dict[str, Any]:
    usage = shutil.disk_usage(root)
    mem = _meminfo()
    return {
        "hostname": platform.node(),
        "boot_id": _boot_id(),
        "cpu_count": os.cpu_count(),
        "load": list(os.getloadavg()),
        "disk": {"path": str(root), "total": usage.total, "free": usage.free},
        "memory": {"total": mem.get("MemTotal"), "available": mem.get("MemAvailable")},
    }


def listeners(args: dict[str, Any]) -> dict[str, Any]:
    ports = require(args, "ports", list, None)
    if ports is not None and not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
        raise OpError(BAD_REQUEST, "ports must be a list of integers")
    sockets = listening_sockets(ports)
    owners = socket_owners(s.inode for s in sockets)
    return {
        "listeners": [{"address": s.address, "port": s.port, "pids": sorted(owners.by_inode.get(s.inode, []))}
                      for s in sorted(sockets, key=lambda s: (s.port, s.address))],
        "unreadable_pids": sorted(owners.unreadable),
    }


def files(args: dict[str, Any]) -> dict[str, Any]:
    """sha256, size and permissions of each absolute path (never following a final symlink):
    the controller compares them with what it wrote."""
    paths = require(args, "paths", list)
    if not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
        raise OpError(BAD_REQUEST, "paths must be absolute paths")
    out: dict[str, Any] = {}
    for path in paths:
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                out[path] = {"type": "symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"}
                continue
            sha, size = hash_file(Path(path))
            out[path] = {"type": "file", "sha256": sha, "size": size, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        except FileNotFoundError:
            out[path] = {"type": "missing"}
        except OSError as exc:
            out[path] = {"type": "unreadable", "reason": exc.strerror or str(exc)}
    return {"files": out}


def free_port(args: dict[str, Any]) -> dict[str, Any]:
    """A TCP port free now on ``address`` (the kernel's pick for port 0) and not among ``avoid``:
    the controller names the ports it handed out recently on this host, so two instances
    started back to back never race for one (runtime/ports.py's rule, kept by the controller
    because a helper lives only as long as its channel)."""
    address = require(args, "address", str)
    avoid = set(require(args, "avoid", list, []))
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(PORT_ATTEMPTS):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((address, 0))
                port = int(sock.getsockname()[1])
        except OSError as exc:
            raise OpError(BAD_REQUEST, f"cannot bind a TCP port on {address}: {exc.strerror or exc}",
                          hint="the instance address must be one of this host's own addresses") from None
        if port not in avoid:
            return {"port": port}
    raise OpError(IO_ERROR, f"no free TCP port on {address} after {PORT_ATTEMPTS} attempts",
                  hint="the host's ephemeral port range may be exhausted (ss -tan | wc -l)")
