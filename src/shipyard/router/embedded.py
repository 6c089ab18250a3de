"""The daemon's handle on embedded routers: one `shipyard.router.dataplane.proxy` process per service.

The router is a separate session so it outlives the daemon and keeps serving its
last table; the daemon re-adopts it through its control socket on restart, and
`ensure` (called periodically) restarts a dead one, which reloads its persisted
table. Nothing here is on the request path.

The listening socket is the daemon's: it binds it once per service and hands the fd to
every router it starts, so when a router dies the kernel keeps queueing new connections
in the backlog until the next one accepts them (no ECONNREFUSED window). A daemon that
re-adopts a running router (after its own restart) asks it for its listening sockets
over the control socket (`listen_fds`, SCM_RIGHTS), checks they are bound to the
service's address, and from then on holds them as if it had bound them. An older router
that does not know the op keeps serving its own copy; the daemon then binds afresh only
once no router holds the address."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.procfs import pid_alive, process_start_time
from shipyard.router.control_client import RouterControlClient
from shipyard.router.listeners import addresses, bind_listen, bound, normalize_listen
from shipyard.router.table import RoutingTable

log = logging.getLogger("shipyard.router")

START_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0
LOG_TAIL_BYTES = 4096


class EmbeddedRouter:
    """Implements engine.ports.Router with the embedded data plane."""

    def __init__(self, paths: StatePaths, python: str = sys.executable) -> None:
        self.paths = paths
        self.python = python
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        """Routers this object started: polled so that none is left a zombie."""
        self._ensuring: dict[str, asyncio.Lock] = {}
        """One ensure at a time per service: two concurrent callers would otherwise both
        find no router, and the second would terminate the one the first just started."""
        self._sockets: dict[str, tuple[str, list[socket.socket]]] = {}
        """Per service, the listen address and the daemon's copies of its listening sockets."""
        self._redirect_sockets: dict[str, tuple[str, list[socket.socket]]] = {}
        """Likewise for the plain-HTTP redirect listener (tls.redirect_http), when there is one."""
        self._started: dict[str, subprocess.Popen[bytes]] = {}
        """The last router this object started per service: how it ended, when it dies."""
        self._no_handover: set[int] = set()
        """Routers (pids) that could not hand their sockets over: asked, and logged, once."""
        self._no_redirect_handover: set[int] = set()
        """Likewise for the redirect listener's sockets."""
        self._serving: dict[str, int] = {}
        """Per service, the pid of the router last found serving it (started or re-adopted)."""
        self._files: dict[str, tuple[Path, Path]] = {}
        """Per service, its pid file and control socket: built once, because every Path built
        interns its components and the supervisor asks several times a second (see procfs)."""

    # -- Router protocol ------------------------------------------------------------

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None) -> dict[str, Any] | None:
        if kind not in (None, "embedded"):
            raise RouterError(f"this router is the embedded one; {service} asks for router kind {kind!r}")
        async with self._ensuring.setdefault(service, asyncio.Lock()):
            return await self._ensure(service, listen, redirect_http)

    async def _ensure(self, service: str, listen: str, redirect_http: str | None) -> dict[str, Any] | None:
        self._reap()
        want = normalize_listen(listen)
        redirect = normalize_listen(redirect_http) if redirect_http else None
        self.paths.routers.mkdir(parents=True, exist_ok=True)
        info = await self._ping(service)
        lost = None
        if info is not None:
            served = info.get("redirect")
            same_redirect = (normalize_listen(str(served)) if served else None) == redirect
            if (info.get("service") == service and normalize_listen(str(info.get("listen"))) == want
                    and same_redirect):
                self._write_pid(service, int(info["pid"]), want)
                self._serving[service] = int(info["pid"])
                held = self._sockets.get(service)
                if held is None or held[0] != want:
                    await self._take_over_sockets(service, want, int(info["pid"]))
                held = self._redirect_sockets.get(service)
                if redirect and (held is None or held[0] != redirect):
                    await self._take_over_sockets(service, redirect, int(info["pid"]), redirect=True)
                return None
            # it listens elsewhere (the spec's `listen` changed) or tls.redirect_http changed; the
            # daemon's copy of an unchanged listen address stays open, so the backlog bridges the gap
            await self.stop(service, keep_listen=normalize_listen(str(info.get("listen"))) == want)
        else:
            lost = self._how_it_ended(service)
            await self._terminate(service, self._pid_from_file(service))  # alive but mute, if any
        await self._start(service, want, redirect)
        return lost

    def _how_it_ended(self, service: str) -> dict[str, Any] | None:
        """What became of the router that served `service` (None: there was none to lose)."""
        proc = self._started.get(service)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return {"pid": proc.pid, "exit_code": None, "signal": None,
                        "reason": "it stopped answering its control socket"}
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
                return {"pid": proc.pid, "exit_code": None, "signal": name, "reason": f"it was killed by {name}"}
            return {"pid": proc.pid, "exit_code": code, "signal": None, "reason": f"it exited with status {code}"}
        try:
            pid = int(json.loads(self.pid_file(service).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return {"pid": pid, "exit_code": None, "signal": None,
                "reason": "it is gone (started by an earlier daemon: its exit status is unknown)"}

    async def apply(self, table: RoutingTable) -> None:
        try:
            await self._client(table.service).set_table(table)
        except RouterError as e:
            raise RouterError(f"cannot apply table version {table.version} to the router for "
                              f"{table.service}: {e.message}", e.hint) from None

    async def current(self, service: str) -> RoutingTable | None:
        return await self._client(service).get_table()

    async def stats(self, service: str) -> dict[str, Any]:
        return await self._client(service).stats()

    async def series(self, service: str, since: float) -> dict[str, Any]:
        return await self._client(service).series(since)

    async def stop(self, service: str, *, keep_listen: bool = False) -> None:
        """Graceful shutdown (in-flight requests finish), SIGKILL after 10 s. The daemon's
        copy of the listening socket closes first, so the port stops taking connections
        (unless `keep_listen`: a router replaced on the same address)."""
        self._reap()
        if not keep_listen:
            self._close_sockets(service)
        self._close_sockets(service, redirect=True)
        pid = None
        try:
            client = self._client(service)
            pid = int((await client.ping())["pid"])
            await client.shutdown()
        except RouterError:
            await self._terminate(service, self._pid_from_file(service))
        else:
            if not await self._wait_exit(pid, STOP_TIMEOUT):
                self._kill(pid)
                await self._wait_exit(pid, 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file(service).unlink()
        self._started.pop(service, None)
        self._serving.pop(service, None)
        self._files.pop(service, None)

    def exited(self, service: str) -> bool:
        """The router last found serving `service` is gone: one poll or /proc read, no socket
        I/O, so the supervisor can ask every tick and repair a crash within one."""
        proc = self._started.get(service)
        if proc is not None:
            return proc.poll() is not None
        pid = self._serving.get(service)
        if pid is None:
            return False
        try:      # not our child: gone, or a zombie nobody has reaped yet
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except (OSError, IndexError):
            return True

    # -- files ------------------------------------------------------------------------

    def pids(self, service: str) -> set[int]:
        """The router process of `service`, if it runs (drift detection: its listener is ours)."""
        pid = self._pid_from_file(service)
        pids = {pid} if pid else set()
        if service in self._sockets:
            pids.add(os.getpid())   # the daemon holds the listening socket between routers
        return pids

    def pid_file(self, service: str) -> Path:
        return self._service_files(service)[0]

    def _socket(self, service: str) -> Path:
        return self._service_files(service)[1]

    def _service_files(self, service: str) -> tuple[Path, Path]:
        files = self._files.get(service)
        if files is None:
            files = self._files[service] = (self.paths.routers / f"{service}.pid",
                                            self.paths.router_socket(service))
        return files

    def _client(self, service: str, timeout: float = 5.0) -> RouterControlClient:
        return RouterControlClient(self._socket(service), timeout)

    def _write_pid(self, service: str, pid: int, listen: str) -> None:
        """Rewritten only when it changes: the supervisor re-adopts every second, and a full
        state disk must not turn that into a failure (RouterError when it must change and cannot)."""
        data = json.dumps({"pid": pid, "start_time": process_start_time(pid), "listen": listen})
        with contextlib.suppress(OSError):
            if self.pid_file(service).read_text() == data:
                return
        tmp = self.pid_file(service).with_suffix(".pid.tmp")
        try:
            tmp.write_text(data)
            os.replace(tmp, self.pid_file(service))
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise RouterError(f"cannot write {self.pid_file(service)}: {e.strerror or e}",
                              f"free space in {self.paths.routers}") from None

    def _pid_from_file(self, service: str) -> int | None:
        """The recorded router pid if that very process (same start time, a router) still runs."""
        try:
            d = json.loads(self.pid_file(service).read_text())
            pid, started = int(d["pid"]), d.get("start_time")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if started is not None and process_start_time(pid) != started:
            return None
        return pid if _is_router(pid, self._socket(service)) else None

    # -- processes ----------------------------------------------------------------------

    async def _ping(self, service: str) -> dict[str, Any] | None:
        try:
            return await self._client(service).ping()
        except RouterError:
            return None

    def _listen_sockets(self, service: str, listen: str, redirect: bool = False) -> list[socket.socket]:
        """The daemon's listening sockets for `service` (its redirect listener), bound now if it
        holds none for `listen`."""
        table = self._redirect_sockets if redirect else self._sockets
        held = table.get(service)
        if held is not None and held[0] == listen:
            return held[1]
        self._close_sockets(service, redirect)
        socks = bind_listen(service, listen, "tls.redirect_http" if redirect else "listen")
        table[service] = (listen, socks)
        return socks

    async def _take_over_sockets(self, service: str, listen: str, pid: int, redirect: bool = False) -> None:
        """Get a copy of a re-adopted router's listening sockets (with `redirect`, its redirect
        listener's), so that its crash, too, refuses no connection. Sockets bound elsewhere
        than `listen` are not kept."""
        refused = self._no_redirect_handover if redirect else self._no_handover
        if pid in refused:
            return
        what = "redirect listener's socket" if redirect else "listening socket"
        try:
            socks = await self._client(service).listen_sockets("redirect" if redirect else "listen")
        except RouterError as e:
            refused.add(pid)
            log.warning("the router for %s (pid %d) did not hand over its %s: %s; until it is "
                        "replaced, a crash of it refuses connections until the next router listens",
                        service, pid, what, e.message)
            return
        want = addresses(listen)
        got = {bound(s) for s in socks}
        if not socks or got != want:
            for sock in socks:
                sock.close()
            refused.add(pid)
            log.warning("the router for %s (pid %d) handed over sockets bound to %s, not %s; not kept",
                        service, pid, ", ".join(sorted(map(str, got))) or "nothing",
                        ", ".join(sorted(map(str, want))))
            return
        self._close_sockets(service, redirect)
        (self._redirect_sockets if redirect else self._sockets)[service] = (listen, socks)
        log.info("took over the %s of the router for %s (pid %d) on %s", what, service, pid, listen)

    def _close_sockets(self, service: str, redirect: bool = False) -> None:
        for s in (self._redirect_sockets if redirect else self._sockets).pop(service, ("", []))[1]:
            s.close()

    async def _start(self, service: str, listen: str, redirect: str | None = None) -> None:
        log_path = self.paths.router_log(service)
        fds = [s.fileno() for s in self._listen_sockets(service, listen)]
        more: list[str] = []
        redirect_fds: list[int] = []
        if redirect:
            try:
                redirect_fds = [s.fileno() for s in self._listen_sockets(service, redirect, redirect=True)]
            except RouterError:
                self._close_sockets(service)
                raise
            more = ["--redirect", redirect, "--redirect-fds", ",".join(map(str, redirect_fds))]
        else:
            self._close_sockets(service, redirect=True)
        argv = [self.python, "-m", "shipyard.router.dataplane.proxy", "--service", service, "--listen", listen,
                "--listen-fds", ",".join(map(str, fds)), *more,
                "--control", str(self.paths.router_socket(service)),
                "--table", str(self.paths.router_table(service))]
        with open(log_path, "ab") as log:
            offset = log.tell()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, pass_fds=fds + redirect_fds)
        self._children[proc.pid] = proc
        self._started[service] = proc
        self._write_pid(service, proc.pid, listen)
        client = self._client(service, timeout=1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                self._children.pop(proc.pid, None)
                self._started.pop(service, None)
                self._serving.pop(service, None)
                self._close_sockets(service)   # no router will accept: refuse, rather than queue forever
                self._close_sockets(service, redirect=True)
                with contextlib.suppress(FileNotFoundError):
                    self.pid_file(service).unlink()
                raise _start_error(service, listen, code, log_path, offset)
            try:
                if (await client.ping()).get("pid") == proc.pid:
                    return
            except RouterError:
                pass
            if loop.time() > deadline:
                self._kill(proc.pid)
                proc.wait()
                self._children.pop(proc.pid, None)
                self._started.pop(service, None)
                self._serving.pop(service, None)
                self._close_sockets(service)
                self._close_sockets(service, redirect=True)
                with contextlib.suppress(FileNotFoundError):
                    self.pid_file(service).unlink()
                raise RouterError(f"the router for {service} did not answer on its control socket within "
                                  f"{START_TIMEOUT:g}s", hint=f"see {log_path}")
            await asyncio.sleep(0.05)

    async def _terminate(self, service: str, pid: int | None) -> None:
        """SIGTERM a router that does not answer its socket, SIGKILL if it lingers."""
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await self._wait_exit(pid, STOP_TIMEOUT):
            self._kill(pid)
            await self._wait_exit(pid, 2.0)

    async def _wait_exit(self, pid: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            proc = self._children.get(pid)
            if proc is not None:
                if proc.poll() is not None:
                    del self._children[pid]
                    return True
            elif not pid_alive(pid):
                return True
            await asyncio.sleep(0.05)
        return False

    def _kill(self, pid: int) -> None:
        # The router leads its own session (start_new_session), so its group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]


def _start_error(service: str, listen: str, code: int, log_path: Path, offset: int) -> RouterError:
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
            return RouterError(f"the router for {service} cannot listen on {listen}: {reason}", hint=hint)
    last = lines[-1] if lines else "no output"
    return RouterError(f"the router for {service} exited at start (exit code {code}): {last}",
                       hint=f"see {log_path}")


def _is_router(pid: int, sock: Path) -> bool:
    """Never signal a recycled pid: it must be a router bound to this very socket."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    # The module's name before the data plane had its own package, so that a router started
    # by an older shipyard is still recognised (and stopped) after an upgrade.
    module = b"shipyard.router.dataplane.proxy" in argv or b"shipyard.router.proxy" in argv
    return module and os.fsencode(str(sock)) in argv
