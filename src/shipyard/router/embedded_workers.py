"""More than one embedded router process per listen address (`router.workers`), a part of
EmbeddedRouter kept apart from the one-process logic it builds on.

Worker 0 is the router embedded.py always ran (its files, sockets, adoption, redirect
listener). Workers 1..N-1 are the same program on the same services file and table files,
each on its own set of listening sockets: the daemon binds one set per worker with
SO_REUSEPORT (the kernel spreads new connections over the sets) and keeps a copy of each, so a
killed worker's clients wait in its backlog until `ensure` starts its replacement on it.

Going from N to M < N workers hands the departing workers' sockets to worker 0 first (it
accepts on them from then on), then shuts them down gracefully; going up again gives such a
socket to the new worker before worker 0 stops accepting on it. Nothing queued in a backlog
is ever closed, so a resize refuses no connection. Each worker enforces 1/N of the limits
(`workers` op), lowered before a worker is added and raised after one has gone, so the
limits hold in total at every moment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.router.control_client import RouterControlClient
from shipyard.router.dataplane.control_hosts import RETIRE_GRACE
from shipyard.router.embedded_process import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    ListenFiles,
    ServiceClient,
    answering,
    ended,
    kill,
    live_router,
    shut_down,
    spawn,
    start_error,
    terminate,
    wait_exit,
    write_pid,
)
from shipyard.router.listeners import addresses, bind_listen, bound

log = logging.getLogger("shipyard.router")


T = TypeVar("T")


def _gone(w: Worker) -> bool:
    return (w.proc.poll() is not None) if w.proc is not None else not live_router(w.files.pid, w.files.control)


class WorkerFiles(ListenFiles):
    """The files of worker `index` (>= 1) of an address: its own control socket, pid file and
    log beside worker 0's; the services file is the address's, shared."""

    def __init__(self, files: ListenFiles, index: int) -> None:   # derived from worker 0's, not from paths
        self.listen = files.listen
        self.index = index
        self.control = files.control.with_name(f"{files.control.stem}w{index}.sock")
        self.pid = files.pid.with_name(files.pid.name.removesuffix(".pid") + f".w{index}.pid")
        self.log = files.log.with_name(files.log.name.removesuffix(".log") + f".w{index}.log")
        self.services = files.services


@dataclass
class Worker:
    files: WorkerFiles
    pid: int
    proc: subprocess.Popen[bytes] | None = None
    socks: list[socket.socket] = field(default_factory=list)
    """The daemon's copies of the sockets this worker accepts on."""
    retiring: bool = False
    """Going (fewer workers): it still gets every table while its clients move, and its
    silence once it has closed its control socket is no failure."""


class RouterWorkers:
    """Mixed into EmbeddedRouter, whose state and helpers it uses."""

    paths: StatePaths
    python: str
    _children: dict[int, subprocess.Popen[bytes]]
    _sockets: dict[str, tuple[str, list[socket.socket]]]

    _where: dict[str, str]

    if TYPE_CHECKING:
        def _files_of(self, listen: str) -> ListenFiles: ...
        async def _ping(self, control: Path) -> dict[str, Any] | None: ...
        def _client(self, service: str, timeout: float = 5.0) -> RouterControlClient: ...

    def _init_workers(self) -> None:
        self._extra: dict[str, dict[int, Worker]] = {}
        """Per address, its workers 1..N-1 found serving (started or re-adopted)."""
        self._orphans: dict[str, list[list[socket.socket]]] = {}
        """Per address, socket sets of workers that went (resize down): worker 0 accepts on them."""
        self._fanout: dict[str, asyncio.Lock] = {}
        """Held by `apply` while it pushes a table and by a worker's start until it is known, so
        no worker started meanwhile serves an older table than the one apply returned for."""

    # -- how many -------------------------------------------------------------------------

    def worker_count(self, listen: str) -> int:
        """Workers the address was last asked for (1 unless a spec said more)."""
        try:
            return max(1, int(self._count_file(listen).read_text()))
        except (OSError, ValueError):
            return 1

    def _count_file(self, listen: str) -> Path:
        files = self._files_of(listen)
        return files.pid.with_name(files.pid.name.removesuffix(".pid") + ".workers")

    def _save_count(self, listen: str, n: int) -> None:
        path = self._count_file(listen)
        if n == 1:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(str(n))
            os.replace(tmp, path)
        except OSError as e:
            raise RouterError(f"cannot write {path}: {e.strerror or e}", f"free space in {path.parent}") from None

    def _orphan_fds(self, listen: str) -> list[int]:
        """Worker 0 accepts on these too (given at its start after a crash)."""
        return [s.fileno() for group in self._orphans.get(listen, []) for s in group]

    def _workers_listening(self, listen: str) -> bool:
        """Whether a worker beyond 0 of the address runs (so the port is ours, shared with it)."""
        files = self._files_of(listen)
        return any(live_router(w.pid, w.control) for w in (WorkerFiles(files, i) for i in self._indices(files)))

    def _fanout_lock(self, listen: str) -> asyncio.Lock:
        return self._fanout.setdefault(listen, asyncio.Lock())

    def _worker_clients(self, listen: str, service: str | None, timeout: float = 5.0) -> list[RouterControlClient]:
        return [ServiceClient(w.files.control, service, timeout) for _, w in sorted(self._extra.get(listen, {}).items())]

    def _worker_pids(self, listen: str) -> set[int]:
        return {w.pid for w in self._extra.get(listen, {}).values()
                if live_router(w.files.pid, w.files.control)}

    def _worker_exited(self, listen: str) -> bool:
        for w in self._extra.get(listen, {}).values():
            if w.retiring:
                continue
            if w.proc is not None:
                if w.proc.poll() is not None:
                    return True
                continue
            try:
                with open(f"/proc/{w.pid}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                        return True
            except (OSError, IndexError):
                return True
        return False

    async def _on_all(self, service: str, call: Callable[[RouterControlClient], Awaitable[T]]) -> list[T]:
        """`call` on every worker serving `service`, at once; worker 0's failure raises, and so
        does a live worker's; a dead worker beyond 0 is left out (until `ensure` replaces it)."""
        listen = self._where.get(service)
        if listen is None or not self._extra.get(listen):
            return [await call(self._client(service))]
        workers = [w for _, w in sorted(self._extra[listen].items())]
        clients = [self._client(service), *(ServiceClient(w.files.control, service) for w in workers)]
        done = await asyncio.gather(*(call(c) for c in clients), return_exceptions=True)
        out: list[T] = []
        for i, got in enumerate(done):
            if isinstance(got, BaseException):
                if i == 0 or not (workers[i - 1].retiring or _gone(workers[i - 1])):
                    raise got
                continue
            out.append(got)
        return out

    # -- ensure -----------------------------------------------------------------------------

    async def _ensure_workers(self, service: str, listen: str, n: int, domains: tuple[str, ...]) -> dict[str, Any] | None:
        """Workers 1..n-1 serve `service` (started, re-adopted or replaced when dead), any beyond
        go (their sockets to worker 0 first); called under the address lock once worker 0 serves.
        Returns how a dead worker ended (for the crash event), else None."""
        files = self._files_of(listen)
        first = RouterControlClient(files.control)
        info = await self._ping(files.control) or {}
        if int(info.get("workers", 1)) < n:   # lower worker 0's share before another takes traffic
            await first.set_workers(n)
        workers = self._extra.setdefault(listen, {})
        lost: dict[str, Any] | None = None
        for i in range(1, n):
            got = await self._ensure_worker(service, listen, WorkerFiles(files, i), n, domains)
            lost = lost or got
        for i in sorted(set(self._indices(files)) | set(workers), reverse=True):
            if i >= n:
                await self._retire_worker(listen, WorkerFiles(files, i))
        if int(info.get("workers", 1)) != n:
            await first.set_workers(n)
            for client in self._worker_clients(listen, None):
                await client.set_workers(n)
        self._save_count(listen, n)
        return lost

    def _indices(self, files: ListenFiles) -> list[int]:
        """Workers whose pid files exist (a daemon restarted after a resize finds them so)."""
        pattern = re.compile(re.escape(files.pid.name.removesuffix(".pid")) + r"\.w(\d+)\.pid")
        try:
            names = os.listdir(files.pid.parent)
        except OSError:
            return []
        return [int(m.group(1)) for name in names if (m := pattern.fullmatch(name))]

    async def _ensure_worker(self, service: str, listen: str, wf: WorkerFiles, n: int,
                             domains: tuple[str, ...]) -> dict[str, Any] | None:
        workers = self._extra.setdefault(listen, {})
        known = workers.get(wf.index)
        info = await self._ping(wf.control)
        lost = None
        if info is None:
            lost = ended(known.proc if known else None, wf.pid) if known or wf.pid.exists() else None
            await terminate(self._children, live_router(wf.pid, wf.control))
            async with self._fanout_lock(listen):
                await self._start_worker(service, listen, wf, n, known.socks if known else None)
        elif known is None or known.pid != int(info["pid"]):
            pid = int(info["pid"])
            write_pid(wf.pid, pid, listen)
            workers[wf.index] = Worker(wf, pid, socks=await self._adopt_sockets(wf, pid, listen))
        served = ((await self._ping(wf.control)) or {}).get("services", {}).get(service)
        if served is None or list(served.get("domains", [])) != list(domains):
            table = self.paths.router_table(service)
            await ServiceClient(wf.control, None).serve(service, domains, table)
        return lost

    async def _adopt_sockets(self, wf: WorkerFiles, pid: int, listen: str) -> list[socket.socket]:
        """A copy of a re-adopted worker's listening sockets, so its crash refuses nothing."""
        try:
            socks = await RouterControlClient(wf.control).listen_sockets()
        except RouterError as e:
            log.warning("router worker %d on %s (pid %d) did not hand over its listening sockets: %s",
                        wf.index, listen, pid, e.message)
            return []
        if {bound(s) for s in socks} != addresses(listen):
            for s in socks:
                s.close()
            return []
        return socks

    async def _start_worker(self, service: str, listen: str, wf: WorkerFiles, n: int,
                            socks: list[socket.socket] | None) -> None:
        orphan = None
        if not socks:
            orphans = self._orphans.get(listen, [])
            orphan = orphans.pop() if orphans else None
            socks = orphan or bind_listen(service, listen, more=True)
        fds = [s.fileno() for s in socks]
        proc, offset = spawn(self.python, wf, fds, None, [], workers=n, worker=wf.index)
        self._children[proc.pid] = proc
        write_pid(wf.pid, proc.pid, listen)
        started, code = await answering(proc, wf.control)
        if not started:
            self._children.pop(proc.pid, None)
            with contextlib.suppress(FileNotFoundError):
                wf.pid.unlink()
            if orphan is not None:
                self._orphans.setdefault(listen, []).append(orphan)     # worker 0 still accepts there
            else:
                for s in socks:
                    s.close()
            self._extra.get(listen, {}).pop(wf.index, None)
            if code is not None:
                raise start_error(f"{service} (worker {wf.index})", listen, code, wf.log, offset)
            raise RouterError(f"router worker {wf.index} for {service} did not answer on its control "
                              f"socket within {START_TIMEOUT:g}s", hint=f"see {wf.log}")
        self._extra.setdefault(listen, {})[wf.index] = Worker(wf, proc.pid, proc, socks)
        if orphan is not None:      # the new worker accepts there now: worker 0 may stop
            await RouterControlClient(self._files_of(listen).control).drop_listen(orphan)

    async def _retire_worker(self, listen: str, wf: WorkerFiles) -> None:
        """Worker 0 takes the worker's sockets over, then the worker finishes its requests and goes."""
        w = self._extra.get(listen, {}).get(wf.index)
        if w is not None:
            w.retiring = True
        socks = w.socks if w is not None else []
        if not socks and await self._ping(wf.control) is not None:
            socks = await self._adopt_sockets(wf, w.pid if w else 0, listen)
        if socks:
            via = wf.control.with_name(wf.control.stem + ".fds")
            await RouterControlClient(self._files_of(listen).control).give_listen_sockets(socks, via)
            self._orphans.setdefault(listen, []).append(socks)
        client = RouterControlClient(wf.control)
        try:
            pid = int((await client.ping())["pid"])
            await client.retire()
        except RouterError:
            await terminate(self._children, live_router(wf.pid, wf.control))
        else:
            if not await wait_exit(self._children, pid, RETIRE_GRACE + STOP_TIMEOUT):
                kill(pid)
                await wait_exit(self._children, pid, 2.0)
        self._extra.get(listen, {}).pop(wf.index, None)
        with contextlib.suppress(FileNotFoundError):
            wf.pid.unlink()
        log.info("router worker %d on %s is gone; worker 0 accepts on its sockets", wf.index, listen)

    async def _stop_workers(self, listen: str) -> None:
        """The address stops serving: every worker beyond 0 shuts down, its sockets closed first."""
        files = self._files_of(listen)
        for group in self._orphans.pop(listen, []):
            for s in group:
                s.close()
        workers = self._extra.pop(listen, {})
        for i in sorted(set(self._indices(files)) | set(workers)):
            wf = WorkerFiles(files, i)
            w = workers.get(i)
            for s in w.socks if w else []:
                s.close()
            await shut_down(self._children, RouterControlClient(wf.control), wf.pid, wf.control)
            with contextlib.suppress(FileNotFoundError):
                wf.pid.unlink()
        self._save_count(listen, 1)
