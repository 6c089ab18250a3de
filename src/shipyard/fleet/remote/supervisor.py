"""The tiny supervisor each remote instance gets: it outlives the helper and the SSH
connection, and it is the one process that can learn the instance's exit status.

The helper runs ``python3 <bundle> supervise`` in a new session and writes the launch spec
to its stdin (env values may be secrets: never written to disk). The supervisor forks and
its first process exits, so the supervisor is nobody's child but init's and can never get
a controlling terminal. It starts the instance in a session of its own (pid == process
group, as the local runtime does), answers ``{"pid", "start_time"}`` on stdout, closes it,
and waits. The exit status is read *without reaping* (``waitid(WNOWAIT)``), written to
``exits/<pid>-<start_time>.json``, and only then is the zombie reaped, so at every moment
the instance is either visible in /proc or its exit record exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from shipyard.procfs import process_start_time


def exit_record_name(pid: int, start_time: int) -> str:
    return f"{pid}-{start_time}.json"


def _reply(doc: dict[str, Any]) -> None:
    os.write(1, json.dumps(doc).encode() + b"\n")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)   # the helper sees EOF: it stops waiting for us
    os.close(devnull)


def _write_record(exits_dir: str, name: str, doc: dict[str, Any]) -> None:
    os.makedirs(exits_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=exits_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(exits_dir, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _append(log: str, line: str) -> None:
    with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def supervise() -> None:
    """Entry point of ``<bundle> supervise`` (stdin: the launch spec as JSON)."""
    # No signal is ignored here: ignored dispositions would pass to the instance through exec.
    # None is needed either: in a session without a terminal no SIGHUP or SIGINT arrives.
    spec = json.loads(sys.stdin.buffer.read())
    if os.fork():
        os._exit(0)
    log = spec["log"]
    try:
        with open(log, "ab", buffering=0) as out:
            proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True)
    except OSError as exc:
        _reply({"ok": False, "error": f"{spec['argv'][0]}: {exc.strerror or exc}"})
        return
    pid = proc.pid
    start_time = process_start_time(pid)   # not reaped yet: /proc/<pid> exists even if it exited
    _reply({"ok": True, "pid": pid, "start_time": start_time})
    _append(log, f"--- shipyard: started {spec['instance_id']} pid={pid} at {_now()}")
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            break
        except InterruptedError:
            continue
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    _write_record(spec["exits"], exit_record_name(pid, start_time or 0),
                  {"pid": pid, "start_time": start_time, "exit_code": code, "at": time.time()})
    _append(log, f"--- shipyard: {spec['instance_id']} pid={pid} exited with code {code} at {_now()}")
    os.waitpid(pid, 0)
