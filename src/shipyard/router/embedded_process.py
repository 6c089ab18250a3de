"""The embedded router's processes as the daemon sees them: where each listen address's files
live, how a router is started and stopped, how its end is told, and the control client that
names the service in every op. (embedded.py decides when; this module knows how.)

One router process serves one listen address and every service on it. Its files, in the
state directory's router/ folder: `L<hash>.sock` (control; short, for the unix socket path
limit), `listen-<addr>.pid`, `.log` and `.services.json` (which services it serves, with
their domains and table files). Each service keeps the names it had when a router served
one service: `<service>.sock` and `<service>.log` are links to its address's socket and log,
`<service>.pid` names the router serving it, `<service>.table.json` is its own table."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.fsutil import write_atomic
from shipyard.paths import StatePaths
from shipyard.procfs import pid_alive, process_start_time
from shipyard.router.control_client import RouterControlClient

START_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0
LOG_TAIL_BYTES = 4096
MODULE = "shipyard.router.dataplane.proxy"


class ListenFiles:
    """The files of the router for one (normalized) listen address."""

    def __init__(self, paths: StatePaths, listen: str) -> None:
        safe = listen.replace("[", "").replace("]", "").replace(":", "_")
        base = paths.routers / f"listen-{safe}"
        self.listen = listen
        self.control = paths.routers / f"L{hashlib.sha256(listen.encode()).hexdigest()[:10]}.sock"
        self.pid = base.with_name(base.name + ".pid")
        self.log = base.with_name(base.name + ".log")
        self.services = base.with_name(base.name + ".services.json")


class ServiceClient(RouterControlClient):
    """A control client that names `service` in every op (a router of one service ignores it)."""

    def __init__(self, sock_path: str | Path, service: str | None, timeout: float = 5.0) -> None:
        super().__init__(sock_path, timeout)
        self.service = service

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.service is not None and "service" not in request:
            request = {**request, "service": self.service}
        return await super()._call(request)

    async def serve(self, service: str, domains: Sequence[str], table: Path) -> None:
        await self._call({"op": "serve", "service": service, "domains": list(domains), "table": str(table)})

    async def forget(self, service: str) -> list[str]:
        """Stop serving `service`; the services left."""
        return list((await self._call({"op": "forget", "service": service})).get("left", []))


def write_pid(path: Path, pid: int, listen: str) -> None:
    """Rewritten only when it changes: the supervisor re-adopts every second, and a full state
    disk must not turn that into a failure (RouterError when it must change and cannot)."""
    data = json.dumps({"pid": pid, "start_time": process_start_time(pid), "listen": listen})
    with contextlib.suppress(OSError):
        if path.read_text() == data:
            return
    try:
        write_atomic(path, data)
    except OSError as e:
        raise RouterError(f"cannot write {path}: {e.strerror or e}", f"free space in {path.parent}") from None


def read_pid(path: Path) -> tuple[int, Any, str | None] | None:
    """(pid, start time, listen) recorded in a pid file, or None."""
    try:
        d = json.loads(path.read_text())
        return int(d["pid"]), d.get("start_time"), d.get("listen")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_router(path: Path, control: Path) -> int | None:
    """The recorded router pid if that very process (same start time, a router) still runs."""
    got = read_pid(path)
    if got is None:
        return None
    pid, started, _listen = got
    if started is not None and process_start_time(pid) != started:
        return None
    return pid if is_router(pid, control) else None


def link(path: Path, target: Path) -> None:
    """`path` -> `target` (relative, same folder), replacing whatever link was there."""
    with contextlib.suppress(OSError):
        if os.readlink(path) == target.name:
            return
    tmp = path.with_name(f".{path.name}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, path)


def ended(proc: subprocess.Popen[bytes] | None, pid_file: Path) -> dict[str, Any] | None:
    """What became of a router (None: there was none to lose)."""
    if proc is not None:
        code = proc.poll()
        if code is None:
            return {"pid": proc.pid, "exit_code": None, "signal": None,
                    "reason": "it stopped answering its control socket"}
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return {"pid": proc.pid, "exit_code": None, "signal": name, "reason": f"it was killed by {name}"}
        return {"pid": proc.pid, "exit_code": code, "signal": None, "reason": f"it exited with status {code}"}
    got = read_pid(pid_file)
    if got is None:
        return None
    return {"pid": got[0], "exit_code": None, "signal": None,
            "reason": "it is gone (started by an earlier daemon: its exit status is unknown)"}


def spawn(python: str, files: ListenFiles, fds: list[int], redirect: str | None,
          redirect_fds: list[int], workers: int = 1, worker: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    """Start the router (`worker` of `workers`) for `files.listen` on the daemon's sockets;
    (process, log offset)."""
    more = ["--redirect", redirect, "--redirect-fds", ",".join(map(str, redirect_fds))] if redirect else []
    if workers > 1 or worker:
        more += ["--workers", str(workers), "--worker", str(worker)]
    argv = [python, "-m", MODULE, "--listen", files.listen, "--listen-fds", ",".join(map(str, fds)), *more,
            "--control", str(files.control), "--services", str(files.services)]
    with open(files.log, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, pass_fds=fds + redirect_fds)
    return proc, offset


async def wait_exit(children: dict[int, subprocess.Popen[bytes]], pid: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        proc = children.get(pid)
        if proc is not None:
            if proc.poll() is not None:
                del children[pid]
                return True
        elif not pid_alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def kill(pid: int) -> None:
    # The router leads its own session (start_new_session), so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def terminate(children: dict[int, subprocess.Popen[bytes]], pid: int | None) -> None:
    """SIGTERM a router that does not answer its socket, SIGKILL if it lingers."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not await wait_exit(children, pid, STOP_TIMEOUT):
        kill(pid)
        await wait_exit(children, pid, 2.0)


async def shut_down(children: dict[int, subprocess.Popen[bytes]], client: RouterControlClient,
                    pid_file: Path, control: Path) -> None:
    """Graceful shutdown over the control socket (in-flight requests finish), SIGKILL after
    STOP_TIMEOUT; a router that does not answer is terminated by its recorded pid."""
    try:
        pid = int((await client.ping())["pid"])
        await client.shutdown()
    except RouterError:
        await terminate(children, live_router(pid_file, control))
    else:
        if not await wait_exit(children, pid, STOP_TIMEOUT):
            kill(pid)
            await wait_exit(children, pid, 2.0)


async def answering(proc: subprocess.Popen[bytes], control: Path) -> tuple[bool, int | None]:
    """Wait for a router just spawned to answer its control socket as itself: (True, None); or
    (False, exit code) when it ended first, (False, None) when START_TIMEOUT passed (it is
    killed then), so the caller can undo what it set up for it and say why."""
    client = RouterControlClient(control, timeout=1.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            return False, code
        if loop.time() > deadline:
            kill(proc.pid)
            proc.wait()
            return False, None
        try:
            if (await client.ping()).get("pid") == proc.pid:
                return True, None
        except RouterError:
            pass
        await asyncio.sleep(0.05)


def start_error(what: str, listen: str, code: int, log_path: Path, offset: int) -> RouterError:
    """Turn the router's last words into a message that says what to do."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(offset, os.path.getsize(log_path) - LOG_TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("listen "):
            reason = line.split(": ", 1)[-1]
            hint = (f"another process uses {listen}: stop it, or change `listen` in the spec"
                    if "in use" in reason else f"change `listen` in the spec; see {log_path}")
            return RouterError(f"the router for {what} cannot listen on {listen}: {reason}", hint=hint)
    last = lines[-1] if lines else "no output"
    return RouterError(f"the router for {what} exited at start (exit code {code}): {last}", hint=f"see {log_path}")


def is_router(pid: int, sock: Path) -> bool:
    """Never signal a recycled pid: it must be a router bound to this very socket."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    # The module's name before the data plane had its own package, so that a router started
    # by an older shipyard is still recognised (and stopped) after an upgrade.
    module = MODULE.encode() in argv or b"shipyard.router.proxy" in argv
    return module and os.fsencode(str(sock)) in argv
