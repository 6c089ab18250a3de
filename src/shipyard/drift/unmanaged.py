"""Unmanaged: what runs on shipyard's turf without shipyard having started it - a process
listening on a port shipyard manages, or an instance process shipyard has no record of."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shipyard.drift.listeners import listening_sockets, socket_owners
from shipyard.drift.processes import all_pids, environ_of, redact_arg
from shipyard.drift.report import DriftFinding
from shipyard.procfs import proc_bytes, read_proc_stat
from shipyard.rollout.records import Instance

LIVE_STATUSES = ("starting", "healthy", "unhealthy")
TRANSIENT_STATUSES = ("stopping",)
"""A process may outlive its record by the moment it takes to exit: not drift."""
ARGV_LIMIT = 300


def describe_process(pid: int) -> dict[str, Any]:
    """pid, argv (secret-looking NAME=value arguments redacted) and uid, for evidence."""
    info: dict[str, Any] = {"pid": pid}
    try:
        raw = proc_bytes(pid, "cmdline")
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0")[:-1]]
        info["argv"] = " ".join(redact_arg(a) for a in argv)[:ARGV_LIMIT]
        info["uid"] = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        pass
    return info


def _parent(pid: int) -> int | None:
    try:
        raw = proc_bytes(pid, "stat")
        return int(raw[raw.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def ancestors(pid: int) -> set[int]:
    """``pid``'s parent, grandparent, ... up to init: none of them can be an instance we started."""
    out: set[int] = set()
    parent = _parent(pid)
    while parent and parent not in out:
        out.add(parent)
        parent = _parent(parent)
    return out


def _group(pid: int) -> int | None:
    st = read_proc_stat(pid)
    return st.pgrp if st is not None else None


def unmanaged_listeners(service: str, managed_ports: Iterable[int], known_pids: Iterable[int],
                        known_groups: Iterable[int] = ()) -> list[DriftFinding]:
    """Listening sockets on ``managed_ports`` owned by none of ``known_pids`` (router, instances)
    nor by a member of ``known_groups`` (an instance's process group: its own children)."""
    ports = set(managed_ports)
    known, groups = set(known_pids), set(known_groups)
    sockets = listening_sockets(ports)
    owners = socket_owners(s.inode for s in sockets)
    findings = []
    for sock in sockets:
        pids = sorted(owners.by_inode.get(sock.inode, []))
        where = f"{sock.address}:{sock.port}"
        if not pids:
            reason = (f"owner not found ({len(owners.unreadable)} processes' descriptors are not readable)"
                      if owners.unreadable else "owner not found (another namespace, or it just closed)")
            findings.append(DriftFinding("unknown", None, service, f"port {sock.port}: a socket listens on {where}, "
                                         f"{reason}", [], {"address": sock.address, "port": sock.port,
                                                           "inode": sock.inode, "reason": reason}))
            continue
        if any(p in known or _group(p) in groups for p in pids):
            continue
        procs = [describe_process(p) for p in pids]
        findings.append(DriftFinding(
            "unmanaged", None, service,
            f"port {sock.port}: pid {', '.join(map(str, pids))} listens on {where} and is not a process shipyard runs",
            [], {"change": "listener", "address": sock.address, "port": sock.port, "pids": pids,
                 "processes": procs}))
    return findings


def _instance_service(instance_id: str, slot: str | None) -> str | None:
    """Instance ids are <service>-<slot>-<hex> (engine/actions.py)."""
    if slot:
        m = re.fullmatch(rf"(.+)-{re.escape(slot)}-[0-9a-f]+", instance_id)
        if m:
            return m.group(1)
    return None


def unmanaged_instances(service: str, records: Mapping[str, tuple[Instance, str]],
                        instances_root: Path | None = None) -> list[DriftFinding]:
    """Processes that carry SHIPYARD_INSTANCE_ID of ``service`` (for this state dir when
    ``instances_root`` is given) but are not a recorded live instance or one of its children.
    ``records``: every instance record of the service by id, whatever its status."""
    me = os.getuid()
    root = str(instances_root.resolve()) + os.sep if instances_root is not None else None
    strays: dict[tuple[str, int], list[int]] = {}
    reasons: dict[tuple[str, int], str] = {}
    unreadable: list[int] = []
    above_us = ancestors(os.getpid()) | {1, os.getpid()}
    for pid in all_pids():
        try:
            env = environ_of(pid)
        except OSError:
            # Another user's process cannot be one of our instances, nor can init or our own
            # ancestors (a sandbox's init hides its environment even from root); any other of
            # ours that hides it could be, so it makes the answer unknown.
            with contextlib.suppress(OSError):
                if pid not in above_us and os.stat(f"/proc/{pid}").st_uid == me:
                    unreadable.append(pid)
            continue
        if env is None:
            continue
        iid = env.get("SHIPYARD_INSTANCE_ID")
        if not iid:
            continue
        if root is not None and not env.get("SHIPYARD_DATA_DIR", "").startswith(root):
            continue
        rec = records.get(iid)
        owner = rec[0].service if rec else _instance_service(iid, env.get("SHIPYARD_SLOT"))
        if owner != service:
            continue
        pgrp = _group(pid)
        if pgrp is None:
            continue
        if rec is None:
            why = "shipyard has no record of this instance"
        elif rec[1] in LIVE_STATUSES:
            if pid == rec[0].pid or pgrp == rec[0].pid:
                continue
            why = f"it claims instance {iid} but is outside that instance's process group {rec[0].pid}"
        elif rec[1] in TRANSIENT_STATUSES:
            continue
        else:
            why = f"the instance is recorded as {rec[1]} but still runs"
        strays.setdefault((iid, pgrp), []).append(pid)
        reasons[(iid, pgrp)] = why
    findings = []
    for (iid, pgrp), pids in sorted(strays.items()):
        findings.append(DriftFinding(
            "unmanaged", iid, service,
            f"instance {iid}: pid {', '.join(map(str, sorted(pids)))} runs but {reasons[(iid, pgrp)]}", [],
            {"change": "instance", "pids": sorted(pids), "process_group": pgrp, "reason": reasons[(iid, pgrp)],
             "processes": [describe_process(p) for p in sorted(pids)]}))
    if unreadable:
        findings.append(DriftFinding(
            "unknown", None, service,
            f"the environment of {len(unreadable)} of our own processes could not be read: an unrecorded "
            "instance among them would go unseen", [], {"pids": sorted(unreadable)[:50]}))
    return findings
