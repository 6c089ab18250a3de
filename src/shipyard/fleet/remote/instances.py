"""Instances on the host: started detached through a supervisor (supervisor.py), known by
(pid, start time) as on one machine (procfs.py), stopped as a process group, their logs read.

Layout under the helper's state root: ``instances/<instance id>/{log,data/,process.json}``
(process.json: its pid and start time, so a controller that died before recording a start
can still find it: `running`) and ``exits/<pid>-<start time>.json`` (written by the
supervisor when the instance exits).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shipyard.procfs import proc_bytes, read_proc_stat

from .protocol import (
    BAD_REQUEST,
    NOT_ALLOWED,
    NOT_FOUND,
    START_FAILED,
    OpError,
    require,
    require_name,
)
from .store import disk_errors
from .supervisor import exit_record_name

SUPERVISOR_START_SECONDS = 30.0
KILL_WAIT_SECONDS = 5.0
EXIT_RECORD_WAIT_SECONDS = 2.0
MAX_LOG_READ = 16 << 20
WITHHELD = "<withheld>"
"""Stands for an environment value the controller did not ask for: secrets never leave the host."""


def _group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_proc_stat(int(name))
            if st is not None and st.pgrp == pgid and not st.dead:
                members.append(int(name))
    return members


def _split_nul(raw: bytes) -> list[str]:
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]] if raw else []


def _identity(args: dict[str, Any]) -> tuple[int, int]:
    pid = require(args, "pid", int)
    start_time = require(args, "start_time", int)
    if pid <= 1:
        raise OpError(BAD_REQUEST, f"pid {pid} is not an instance's")
    return pid, start_time


def _identities(args: dict[str, Any]) -> list[tuple[int, int]]:
    procs = require(args, "processes", list)
    if not all(isinstance(p, dict) for p in procs):
        raise OpError(BAD_REQUEST, "processes must be a list of {pid, start_time}")
    return [_identity(p) for p in procs]


class Instances:
    def __init__(self, state_root: Path, bundle: str) -> None:
        self.root = Path(state_root) / "instances"
        self.exits = Path(state_root) / "exits"
        self.bundle = bundle

    def _dir(self, args: dict[str, Any]) -> Path:
        return self.root / require_name(args.get("instance_id"), "instance_id")

    def start(self, args: dict[str, Any]) -> dict[str, Any]:
        instance_dir = self._dir(args)
        argv = require(args, "argv", list)
        env = require(args, "env", dict, {})
        cwd = require(args, "cwd", str)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise OpError(BAD_REQUEST, "argv must be a non-empty list of strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise OpError(BAD_REQUEST, "env must map strings to strings")
        if not os.path.isabs(cwd) or not os.path.isdir(cwd):
            raise OpError(NOT_FOUND, f"cwd {cwd} is not a directory on this host",
                          hint="materialise the image first and start from its tree")
        log = instance_dir / "log"
        with disk_errors(f"prepare {instance_dir}", instance_dir.parent):
            (instance_dir / "data").mkdir(parents=True, exist_ok=True)
            self.exits.mkdir(parents=True, exist_ok=True)
            open(log, "ab").close()
        spec = {"instance_id": instance_dir.name, "argv": argv, "env": env, "cwd": cwd,
                "log": str(log), "exits": str(self.exits)}
        with open(log, "ab") as err:
            sup = subprocess.Popen([sys.executable, "-I", self.bundle, "supervise"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=err, start_new_session=True, close_fds=True,
                                   cwd="/")   # pins no file system the host may want to unmount
        try:
            out, _ = sup.communicate(json.dumps(spec).encode(), timeout=SUPERVISOR_START_SECONDS)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.communicate()
            raise OpError(START_FAILED, f"the supervisor of {instance_dir.name} did not answer within "
                          f"{SUPERVISOR_START_SECONDS:g}s", hint=f"see {log} on the host") from None
        try:
            answer = json.loads(out)
        except ValueError:
            raise OpError(START_FAILED, f"the supervisor of {instance_dir.name} failed (exit status "
                          f"{sup.returncode})", hint=f"see {log} on the host") from None
        if not answer.get("ok"):
            raise OpError(START_FAILED, f"cannot start {instance_dir.name}: {answer.get('error')}",
                          hint="check that the command is an executable for this host")
        with disk_errors(f"record {instance_dir.name}", instance_dir.parent):
            (instance_dir / "process.json").write_text(
                json.dumps({"pid": answer["pid"], "start_time": answer["start_time"]}))
        return {"pid": answer["pid"], "start_time": answer["start_time"], "log": str(log),
                "instance_dir": str(instance_dir), "data_dir": str(instance_dir / "data")}

    def _exit_code(self, pid: int, start_time: int) -> int | None:
        try:
            return int(json.loads((self.exits / exit_record_name(pid, start_time)).read_bytes())["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def state(self, pid: int, start_time: int) -> dict[str, Any]:
        """running | exiting (a zombie: its code comes next) | exited (with code) | gone (code unknown)."""
        st = read_proc_stat(pid)
        ours = st is not None and st.start_time == start_time
        if ours and not st.dead:   # type: ignore[union-attr]
            return {"pid": pid, "start_time": start_time, "state": "running", "exit_code": None}
        code = self._exit_code(pid, start_time)
        if code is not None:
            return {"pid": pid, "start_time": start_time, "state": "exited", "exit_code": code}
        return {"pid": pid, "start_time": start_time, "state": "exiting" if ours else "gone", "exit_code": None}

    def running(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every instance started here that still runs: id, pid, start time."""
        found = []
        for record in sorted(self.root.glob("*/process.json")) if self.root.is_dir() else []:
            try:
                doc = json.loads(record.read_bytes())
                pid, start_time = int(doc["pid"]), int(doc["start_time"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if self.state(pid, start_time)["state"] == "running":
                found.append({"instance_id": record.parent.name, "pid": pid, "start_time": start_time})
        return {"processes": found}

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"processes": [self.state(*p) for p in _identities(args)]}

    def _signal(self, pid: int, start_time: int, sig: signal.Signals) -> None:
        st = read_proc_stat(pid)
        if st is not None and st.start_time != start_time:
            return   # the pid is another process's now; the group may still hold our leftovers
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise OpError(NOT_ALLOWED, f"not allowed to signal process group {pid}",
                          hint="run the helper as the user that started the instance") from None

    def _still_running(self, procs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Those that are ours and alive, or have something left in their group. A pid held by
        another process means ours is long gone, leftovers too: the kernel never hands out a
        pid that is still a group's id. One pass over /proc for all of them."""
        groups = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = read_proc_stat(int(name))
                if st is not None and not st.dead:
                    groups.add(st.pgrp)
        left = []
        for pid, start_time in procs:
            st = read_proc_stat(pid)
            if st is not None and st.start_time != start_time:
                continue
            if (st is not None and not st.dead) or pid in groups:
                left.append((pid, start_time))
        return left

    def _wait(self, procs: list[tuple[int, int]], seconds: float) -> list[tuple[int, int]]:
        deadline = time.monotonic() + seconds
        delay = 0.005
        left = self._still_running(procs)
        while left and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
            left = self._still_running(left)
        return left

    def stop(self, args: dict[str, Any]) -> dict[str, Any]:
        """SIGTERM (and SIGCONT) to each group, SIGKILL to those left after ``timeout``: all at
        once, so stopping a host's instances takes one grace period, not one each. The helper
        serves nothing else meanwhile. ``stuck``: still there after SIGKILL."""
        procs = list(dict.fromkeys(_identities(args)))
        timeout = max(0.0, float(require(args, "timeout", (int, float), 10.0)))
        began = time.monotonic()
        running = self._still_running(procs)
        how = {p: "not running" for p in procs}
        for p in running:
            self._signal(*p, signal.SIGTERM)
            self._signal(*p, signal.SIGCONT)   # a stopped process only sees the TERM once it runs
            how[p] = "SIGTERM"
        left = self._wait(running, timeout)
        for p in left:
            self._signal(*p, signal.SIGKILL)
            how[p] = f"SIGKILL after {timeout:g}s grace"
        stuck = set(self._wait(left, KILL_WAIT_SECONDS))
        awaited = [p for p in running if p not in stuck]
        deadline = time.monotonic() + EXIT_RECORD_WAIT_SECONDS   # the supervisor writes the code
        while awaited and time.monotonic() < deadline:
            awaited = [p for p in awaited if self.state(*p)["state"] != "exited"]
            if awaited:
                time.sleep(0.01)
        seconds = round(time.monotonic() - began, 3)
        return {"processes": [{**self.state(*p), "how": how[p], "seconds": seconds, "stuck": p in stuck}
                              for p in procs]}

    def logs(self, args: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Bytes from ``offset``, or the last ``tail`` bytes; at most ``limit`` of them."""
        log = self._dir(args) / "log"
        limit = min(require(args, "limit", int, 1 << 20), MAX_LOG_READ)
        offset = require(args, "offset", int, None)
        tail = require(args, "tail", int, None)
        if (offset is None) == (tail is None) or (offset or 0) < 0 or (tail or 0) < 0 or limit < 0:
            raise OpError(BAD_REQUEST, "give exactly one of offset >= 0 or tail >= 0 (and limit >= 0)")
        try:
            with open(log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = min(offset, size) if offset is not None else max(0, size - tail)
                f.seek(start)
                data = f.read(limit)
        except FileNotFoundError:
            raise OpError(NOT_FOUND, f"no log for instance {log.parent.name} on this host") from None
        return {"file_size": size, "offset": start, "next_offset": start + len(data)}, data

    def inspect(self, args: dict[str, Any]) -> dict[str, Any]:
        """argv and initial environment of that very process, for drift/processes.py's compare on
        the controller. Only the values of ``values_for`` are sent (the non-secret names the
        controller compares); every other variable is named with its value withheld."""
        pid, start_time = _identity(args)
        wanted = set(require(args, "values_for", list, []))
        st = read_proc_stat(pid)
        if st is None or st.dead or st.start_time != start_time:
            return {"state": "gone" if st is None or st.dead else "recycled"}
        try:
            argv = _split_nul(proc_bytes(pid, "cmdline"))
            items = _split_nul(proc_bytes(pid, "environ"))
        except (FileNotFoundError, ProcessLookupError):
            return {"state": "gone"}
        except PermissionError:
            raise OpError(NOT_ALLOWED, f"not allowed to read /proc/{pid}",
                          hint="run the helper as the user that started the instance") from None
        again = read_proc_stat(pid)
        if again is None or again.dead or again.start_time != start_time:
            return {"state": "gone"}   # it exited while we read: what we read may be another's
        env = {}
        for item in items:
            name, sep, value = item.partition("=")
            if sep:
                env[name] = value if name in wanted else WITHHELD
        return {"state": "running", "argv": argv, "env": env}
