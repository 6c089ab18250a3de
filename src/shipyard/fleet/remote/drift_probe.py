"""``drift.scan``: everything a fleet drift scan needs from one host, in one request.

The controller names the image trees to verify (metadata or full re-hash), the instance
processes to inspect, the ports to look for listeners on and the files shipyard manages
outside the trees; the helper answers all of it at once, so a scan of 100 hosts is one
round trip each. Only facts travel: the judging happens on the controller (drift/fleet.py).
Each part fails on its own (an ``error`` in its place), so one unreadable tree never hides
the rest of the host's answer.
"""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

from shipyard.drift.listeners import listening_sockets, socket_owners
from shipyard.procfs import proc_bytes, read_proc_stat

from . import host
from .instances import WITHHELD, Instances
from .protocol import BAD_REQUEST, OpError, require, require_name, require_sha
from .store import HostStore

ARGV_LIMIT = 50
"""Arguments of a stranger's process kept for evidence."""
INSTANCE_VARIABLES = ("SHIPYARD_INSTANCE_ID", "SHIPYARD_SLOT", "SHIPYARD_DATA_DIR")


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _split_nul(raw: bytes) -> list[str]:
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]] if raw else []


def process_owner(pid: int) -> dict[str, Any]:
    """uid (the real one, as /proc/<pid>/status says) and user name; {} when gone."""
    try:
        for line in proc_bytes(pid, "status").decode("ascii", "replace").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                return {"uid": uid, "user": user_name(uid)}
    except (OSError, ValueError, IndexError):
        pass
    return {}


def process_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def describe(pid: int) -> dict[str, Any]:
    """A process on a service port that may be nobody's: pid, process group, owner, argv."""
    info: dict[str, Any] = {"pid": pid}
    st = read_proc_stat(pid)
    if st is not None:
        info["pgrp"] = st.pgrp
    info.update(process_owner(pid))
    try:
        info["argv"] = _split_nul(proc_bytes(pid, "cmdline"))[:ARGV_LIMIT]
    except OSError:
        pass
    return info


def _processes(instances: Instances, procs: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in procs:
        if not isinstance(p, dict):
            raise OpError(BAD_REQUEST, "processes must be a list of {instance_id, pid, start_time, values_for}")
        iid = require_name(p.get("instance_id"), "instance_id")
        try:
            answer = instances.inspect(p)
        except OpError as exc:
            out[iid] = {"state": "unreadable", "error": exc.to_dict()}
            continue
        if answer.get("state") == "running":
            pid = int(p["pid"])
            answer.update(process_owner(pid), cwd=process_cwd(pid))
        else:
            st = read_proc_stat(int(p["pid"]))
            if st is not None and not st.dead:   # the pid now belongs to another process
                answer["now"] = describe(int(p["pid"]))
        out[iid] = answer
    return out


def _listeners(ports: list[Any]) -> dict[str, Any]:
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
        raise OpError(BAD_REQUEST, "ports must be a list of integers")
    sockets = listening_sockets(ports) if ports else []
    owners = socket_owners(s.inode for s in sockets)
    return {"listeners": [{"address": s.address, "port": s.port,
                           "owners": [describe(pid) for pid in sorted(owners.by_inode.get(s.inode, []))]}
                          for s in sorted(sockets, key=lambda s: (s.port, s.address))],
            "unreadable_pids": sorted(owners.unreadable)}


def _instance_processes(instances_root: str) -> dict[str, Any]:
    """Every process of this helper's state dir that carries an instance id (recorded or not):
    the controller tells its own instances (and their children) from strays."""
    prefix = instances_root.rstrip("/") + "/"
    found, unreadable = [], []
    me, mine = os.getpid(), os.getppid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me, mine):
            continue
        pid = int(name)
        try:
            items = _split_nul(proc_bytes(pid, "environ"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:
            if process_owner(pid).get("uid") == os.getuid():
                unreadable.append(pid)
            continue
        env = dict(item.partition("=")[::2] for item in items if "=" in item)
        if not env.get("SHIPYARD_INSTANCE_ID") or not env.get("SHIPYARD_DATA_DIR", "").startswith(prefix):
            continue
        st = read_proc_stat(pid)
        if st is None or st.dead:
            continue
        found.append({"pid": pid, "pgrp": st.pgrp, "start_time": st.start_time,
                      **{k.removeprefix("SHIPYARD_").lower(): env.get(k) for k in INSTANCE_VARIABLES}})
    return {"processes": sorted(found, key=lambda p: p["pid"]), "unreadable_pids": sorted(unreadable)}


def _part(out: dict[str, Any], key: str, fn: Any, *args: Any) -> None:
    try:
        out[key] = fn(*args)
    except OpError as exc:
        out[key] = {"error": exc.to_dict()}
    except OSError as exc:
        out[key] = {"error": {"code": "io_error", "message": exc.strerror or str(exc)}}


def scan(store: HostStore, instances: Instances, args: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    mode = require(args, "mode", str, "metadata")
    if mode not in ("metadata", "full"):
        raise OpError(BAD_REQUEST, f"mode {mode!r} is not 'metadata' or 'full'")
    images = [require_sha(i, "image_id") for i in require(args, "images", list, [])]
    procs = require(args, "processes", list, [])
    ports = require(args, "ports", list, [])
    paths = require(args, "files", list, [])
    uid = os.getuid()
    out: dict[str, Any] = {"uid": uid, "user": user_name(uid), "instances_root": str(instances.root),
                           "withheld": WITHHELD}
    trees: dict[str, Any] = {}
    for image_id in dict.fromkeys(images):
        try:
            trees[image_id] = store.verify({"image_id": image_id, "mode": mode})
        except OpError as exc:
            trees[image_id] = {"error": exc.to_dict()}
    out["trees"] = trees
    _part(out, "processes", _processes, instances, procs)
    _part(out, "listeners", _listeners, ports)
    _part(out, "files", lambda: host.files({"paths": paths})["files"])
    _part(out, "instance_processes", _instance_processes, str(instances.root))
    out["seconds"] = round(time.perf_counter() - began, 6)
    return out
