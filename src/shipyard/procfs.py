"""What /proc says about a process: the one place that parses /proc/<pid>/stat, for the
runtime (instances), the router adapter and the database scratch sweeper alike."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    """The few fields of /proc/<pid>/stat we need."""

    state: str
    pgrp: int
    start_time: int

    @property
    def dead(self) -> bool:
        """A zombie has exited; only its exit status is left for its parent to collect."""
        return self.state in ("Z", "X", "x")


def proc_bytes(pid: int | str, name: str) -> bytes:
    """The bytes of /proc/<pid>/<name>; OSError as open() raises it.

    A plain str path on purpose: pathlib interns every path component (sys.intern), so a
    Path per pid read, several times a second for the life of the daemon, churns CPython's
    table of interned strings until it doubles (a 2 MB step in the daemon's RSS)."""
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def read_proc_stat(pid: int) -> ProcStat | None:
    """None when the pid does not exist (or /proc cannot tell)."""
    try:
        raw = proc_bytes(pid, "stat")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself contain ')' or spaces.
    try:
        fields = raw[raw.rindex(b")") + 2 :].split()
        return ProcStat(state=fields[0].decode(), pgrp=int(fields[2]), start_time=int(fields[19]))
    except (ValueError, IndexError):  # pragma: no cover - a process vanishing mid-read
        return None


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: clock ticks after boot at which the process started."""
    stat = read_proc_stat(pid)
    return stat.start_time if stat else None


def pid_alive(pid: int) -> bool:
    """The pid exists and is not a zombie (a process we may not signal still counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = read_proc_stat(pid)
    return stat is None or not stat.dead
