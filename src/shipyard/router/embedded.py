"""The daemon's handle on embedded routers: one `shipyard.router.dataplane.proxy` process per
listen address, serving every service on it (each by its domains; embedded_process.py has
the files and processes).

The router is a separate session so it outlives the daemon and keeps serving its last
tables; the daemon re-adopts it through its control socket on restart, and `ensure` (called
periodically) restarts a dead one, which serves every service it served again, each from its
persisted table. A service joins a running router with the `serve` op and leaves it with
`forget`: neither touches the other services' connections. Nothing here is on the request path.

The listening socket is the daemon's: it binds it once per address and hands the fd to
every router it starts, so when a router dies the kernel keeps queueing new connections
in the backlog until the next one accepts them (no ECONNREFUSED window). A daemon that
re-adopts a running router (after its own restart) asks it for its listening sockets
over the control socket (`listen_fds`, SCM_RIGHTS), checks they are bound to the
address, and from then on holds them as if it had bound them.

A router of one service from before shared addresses (its own `<service>.sock`) is adopted
as it is while its service names no domains; once the address is to be shared, it is
replaced (its sockets taken over first, so no connection is refused)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.router.control_client import RouterControlClient
from shipyard.router.dataplane.control_hosts import load_services, save_services
from shipyard.router.embedded_legacy import LegacyRouters
from shipyard.router.embedded_process import (
    START_TIMEOUT,
    ListenFiles,
    ServiceClient,
    answering,
    ended,
    link,
    live_router,
    read_pid,
    shut_down,
    spawn,
    start_error,
    terminate,
    write_pid,
)
from shipyard.router.embedded_workers import RouterWorkers
from shipyard.router.listeners import HeldSockets, normalize_listen
from shipyard.router.table import RoutingTable
from shipyard.router.worker_stats import merge_series, merge_stats

__all__ = ["EmbeddedRouter", "normalize_listen"]

log = logging.getLogger("shipyard.router")


class EmbeddedRouter(LegacyRouters, RouterWorkers, HeldSockets):
    """Implements engine.ports.Router with the embedded data plane."""

    def __init__(self, paths: StatePaths, python: str = sys.executable) -> None:
        HeldSockets.__init__(self)
        self._init_workers()
        self.paths = paths
        self.python = python
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        """Routers this object started: polled so that none is left a zombie."""
        self._ensuring: dict[str, asyncio.Lock] = {}
        """One ensure at a time per address: two concurrent callers would otherwise both find
        no router, and the second would terminate the one the first just started."""
        self._started: dict[str, subprocess.Popen[bytes]] = {}
        """The last router this object started per address: how it ended, when it dies."""
        self._serving: dict[str, int] = {}
        """Per address, the pid of the router last found serving it (started or re-adopted)."""
        self._where: dict[str, str] = {}
        """Per service, the address it is served on."""
        self._legacy: set[str] = set()
        """Services served by an adopted router of one service (from before shared addresses)."""
        self._lost: dict[str, dict[str, Any]] = {}
        """Per service, how the router of its address ended when another service's ensure
        replaced it: told to that service's next ensure, so each records the crash."""
        self._files: dict[str, ListenFiles] = {}
        self._service_files: dict[str, tuple[Path, Path]] = {}
        """Per service, its pid file and control socket link: built once, because every Path built
        interns its components and the supervisor asks several times a second (see procfs)."""

    # -- Router protocol ------------------------------------------------------------

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None, domains: Sequence[str] = (),
                     workers: int | None = None) -> dict[str, Any] | None:
        """`workers` (router.workers, given when a release is deployed): processes on the address;
        None: as many as it was last given (embedded_workers.py)."""
        if kind not in (None, "embedded"):
            raise RouterError(f"this router is the embedded one; {service} asks for router kind {kind!r}")
        want = normalize_listen(listen)
        redirect = normalize_listen(redirect_http) if redirect_http else None
        before = self._listen_of(service)
        if before is not None and before != want:    # the spec's `listen` changed
            await self.stop(service)
        async with self._lock(want):
            lost = await self._ensure(service, want, redirect, tuple(domains))
            n = workers or self.worker_count(want)
            if service in self._legacy:
                if n > 1:
                    raise RouterError(f"{service} is served by a router of one service from before shared "
                                      f"addresses, which cannot have {n} workers",
                                      f"deploy {service} with router.workers: 1 once, then again with {n}")
                return lost
            if n > 1 or self._extra.get(want) or self.worker_count(want) > 1:
                lost = await self._ensure_workers(service, want, n, tuple(domains)) or lost
            return lost

    async def _ensure(self, service: str, want: str, redirect: str | None,
                      domains: tuple[str, ...]) -> dict[str, Any] | None:
        self._reap()
        self.paths.routers.mkdir(parents=True, exist_ok=True)
        files = self._files_of(want)
        lost = self._lost.pop(service, None)
        info = await self._ping(files.control)
        if info is None:
            alone = [s for s in self._legacy if s != service and self._where.get(s) == want]
            if alone:   # (the engine refuses this first: that service names no domains)
                raise RouterError(f"{want} is served by a router of {alone[0]} alone (started before shared "
                                  f"addresses); {service} cannot join it", f"deploy {alone[0]} again with "
                                  "`domains:` first: that replaces its router by one for the address")
            legacy = await self._legacy_router(service)
            if legacy is not None and await self._keep_legacy(service, want, redirect, domains, legacy):
                return None
            if service in self._legacy or legacy is not None:
                lost = None     # replaced on purpose, not lost
            else:
                lost = ended(self._started.get(want), files.pid) or lost
            await terminate(self._children, live_router(files.pid, files.control))   # alive but mute, if any
            await self._start(service, want, redirect)
            self._tell_others(want, service, lost)
        elif (normalize_listen(str(info["redirect"])) if info.get("redirect") else None) != redirect:
            # tls.redirect_http changed: the daemon's copy of the address stays open, so the
            # backlog bridges the gap to the next router
            await self._stop_listen(want, keep_listen=True)
            await self._start(service, want, redirect)
        else:
            pid = int(info["pid"])
            write_pid(files.pid, pid, want)
            self._serving[want] = pid
            held = self._sockets.get(want)
            client = RouterControlClient(files.control)
            if held is None:
                await self._take_over_sockets(client, want, pid)
            held = self._redirect_sockets.get(want)
            if redirect and (held is None or held[0] != redirect):
                await self._take_over_sockets(client, redirect, pid, listen=want)
        served = ((await self._ping(files.control)) or {}).get("services", {}).get(service)
        if served is None or list(served.get("domains", [])) != list(domains):
            try:
                await ServiceClient(files.control, None).serve(service, domains, self.paths.router_table(service))
            except RouterError as e:
                if not ((await self._ping(files.control)) or {}).get("services"):
                    await self._stop_listen(want, keep_listen=False)    # started for nothing: not left open
                raise RouterError(f"the router on {want} cannot serve {service}: {e.message}", e.hint) from None
        self._bind(service, want)
        return lost

    async def apply(self, table: RoutingTable) -> None:
        """Returns once every worker of the address serves `table` (a worker found dead is
        skipped: its replacement loads the table worker 0 persisted before answering)."""
        listen = self._where.get(table.service)
        if listen is None or not self._extra.get(listen):
            return await self._apply_one(self._client(table.service), table)
        async with self._fanout_lock(listen):
            await self._on_all(table.service, lambda c: self._apply_one(c, table))

    async def _apply_one(self, client: RouterControlClient, table: RoutingTable) -> None:
        try:
            await client.set_table(table)
        except RouterError as e:
            raise RouterError(f"cannot apply table version {table.version} to the router for "
                              f"{table.service}: {e.message}", e.hint) from None

    async def current(self, service: str) -> RoutingTable | None:
        """The table every worker serves at least: the oldest one served, if they differ."""
        tables = await self._on_all(service, lambda c: c.get_table())
        if any(t is None for t in tables):
            return None
        return min(tables, key=lambda t: t.version)

    async def stats(self, service: str) -> dict[str, Any]:
        got = await self._on_all(service, lambda c: c.stats())
        return got[0] if len(got) == 1 else merge_stats(got)

    async def series(self, service: str, since: float) -> dict[str, Any]:
        got = await self._on_all(service, lambda c: c.series(since))
        return got[0] if len(got) == 1 else merge_series(got)

    async def stop(self, service: str, *, keep_listen: bool = False) -> None:
        """Stop serving `service`. Another service on its address keeps serving, untouched;
        the last one's router shuts down gracefully (in-flight requests finish, SIGKILL after
        10 s), and the daemon's copy of the listening socket closes first, so the port stops
        taking connections (unless `keep_listen`: a router replaced on the same address)."""
        self._reap()
        listen = self._listen_of(service)
        if listen is None or service in self._legacy or self._is_legacy_socket(service):
            await self._stop_legacy(service, listen, keep_listen)
            return
        async with self._lock(listen):
            files = self._files_of(listen)
            try:
                left = await ServiceClient(files.control, None).forget(service)
            except RouterError:     # no router answers: the others on the address are served again
                entries = load_services(files.services)      # from the services file at its restart
                entries.pop(service, None)
                left = sorted(entries)
                if left:
                    with contextlib.suppress(OSError):
                        save_services(files.services, entries)
            for client in self._worker_clients(listen, None):
                with contextlib.suppress(RouterError):
                    await ServiceClient(client.sock_path, None).forget(service)
            if not left:
                await self._stop_workers(listen)
                await self._stop_listen(listen, keep_listen)
                with contextlib.suppress(FileNotFoundError):
                    files.services.unlink()
            else:
                log.info("%s left the router on %s; it serves on for %s", service, listen, ", ".join(left))
            self._unbind(service)

    def exited(self, service: str) -> bool:
        """The router last found serving `service` is gone: one poll or /proc read, no socket
        I/O, so the supervisor can ask every tick and repair a crash within one."""
        listen = self._where.get(service)
        if listen is None:
            return False
        if self._extra.get(listen) and self._worker_exited(listen):
            return True
        proc = self._started.get(listen)
        if proc is not None:
            return proc.poll() is not None
        pid = self._serving.get(listen)
        if pid is None:
            return False
        try:      # not our child: gone, or a zombie nobody has reaped yet
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except (OSError, IndexError):
            return True

    def pids(self, service: str) -> set[int]:
        """The router process serving `service`, if it runs (drift detection: its listener is ours)."""
        listen = self._listen_of(service)
        control = self._socket(service) if listen is None or service in self._legacy else \
            self._files_of(listen).control
        pid = live_router(self.pid_file(service), control)
        pids = {pid} if pid else set()
        if listen is not None:
            pids |= self._worker_pids(listen)
        if listen is not None and listen in self._sockets:
            pids.add(os.getpid())   # the daemon holds the listening socket between routers
        return pids

    # -- files ------------------------------------------------------------------------

    def pid_file(self, service: str) -> Path:
        return self._paths_of(service)[0]

    def _socket(self, service: str) -> Path:
        return self._paths_of(service)[1]

    def _paths_of(self, service: str) -> tuple[Path, Path]:
        got = self._service_files.get(service)
        if got is None:
            got = self._service_files[service] = (self.paths.routers / f"{service}.pid",
                                                  self.paths.router_socket(service))
        return got

    def _files_of(self, listen: str) -> ListenFiles:
        files = self._files.get(listen)
        if files is None:
            files = self._files[listen] = ListenFiles(self.paths, listen)
        return files

    def _lock(self, listen: str) -> asyncio.Lock:
        return self._ensuring.setdefault(listen, asyncio.Lock())

    def _client(self, service: str, timeout: float = 5.0) -> RouterControlClient:
        return ServiceClient(self._socket(service), service, timeout)

    def _listen_of(self, service: str) -> str | None:
        listen = self._where.get(service)
        if listen is None:
            got = read_pid(self.pid_file(service))
            if got is not None and got[2]:
                listen = self._where[service] = normalize_listen(got[2])
        return listen

    def _bind(self, service: str, listen: str) -> None:
        """`service` is served by the router on `listen`: its own names point there."""
        files = self._files_of(listen)
        try:
            link(self._socket(service), files.control)
            link(self.paths.router_log(service), files.log)
        except OSError as e:
            raise RouterError(f"cannot link {self._socket(service)} to {files.control}: {e.strerror or e}",
                              f"free space in {self.paths.routers}") from None
        write_pid(self.pid_file(service), self._serving[listen], listen)
        self._where[service] = listen
        self._legacy.discard(service)

    def _unbind(self, service: str) -> None:
        for path in (self.pid_file(service), self._socket(service)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._where.pop(service, None)
        self._lost.pop(service, None)
        self._legacy.discard(service)
        self._service_files.pop(service, None)

    def _tell_others(self, listen: str, service: str, lost: dict[str, Any] | None) -> None:
        if lost is None:
            return
        for other in load_services(self._files_of(listen).services):
            if other != service:
                self._lost[other] = lost

    # -- processes ----------------------------------------------------------------------

    async def _ping(self, control: Path) -> dict[str, Any] | None:
        try:
            info = await RouterControlClient(control).ping()
        except RouterError:
            return None
        return info if "services" in info else None

    async def _start(self, service: str, listen: str, redirect: str | None) -> None:
        files = self._files_of(listen)
        more = self._workers_listening(listen)
        fds = [s.fileno() for s in self._listen_sockets(service, listen, more=more)] + self._orphan_fds(listen)
        redirect_fds: list[int] = []
        if redirect:
            try:
                redirect_fds = [s.fileno() for s in self._listen_sockets(service, listen, redirect)]
            except RouterError:
                self._close_listen(listen)
                raise
        else:
            self._close_listen(listen, redirect=True)
        proc, offset = spawn(self.python, files, fds, redirect, redirect_fds, workers=self.worker_count(listen))
        self._children[proc.pid] = proc
        self._started[listen] = proc
        write_pid(files.pid, proc.pid, listen)
        started, code = await answering(proc, files.control)
        if started:
            self._serving[listen] = proc.pid
            return
        self._children.pop(proc.pid, None)
        self._started.pop(listen, None)
        self._serving.pop(listen, None)
        self._close_listen(listen)   # no router will accept: refuse, rather than queue forever
        self._close_listen(listen, redirect=True)
        with contextlib.suppress(FileNotFoundError):
            files.pid.unlink()
        if code is not None:
            raise start_error(service, listen, code, files.log, offset)
        raise RouterError(f"the router for {service} did not answer on its control socket within "
                          f"{START_TIMEOUT:g}s", hint=f"see {files.log}")

    async def _stop_listen(self, listen: str, keep_listen: bool) -> None:
        files = self._files_of(listen)
        if not keep_listen:
            self._close_listen(listen)
        self._close_listen(listen, redirect=True)
        await shut_down(self._children, RouterControlClient(files.control), files.pid, files.control)
        with contextlib.suppress(FileNotFoundError):
            files.pid.unlink()
        self._started.pop(listen, None)
        self._serving.pop(listen, None)

    # -- listening sockets ----------------------------------------------------------------

    def _close_sockets(self, service: str, redirect: bool = False) -> None:
        """Close the daemon's copies of the sockets of `service`'s address (as a daemon exiting does)."""
        listen = self._listen_of(service)
        if listen is not None:
            self._close_listen(listen, redirect)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]
