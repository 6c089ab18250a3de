"""benchmarks/router.py's "embedded, 2 workers" target: `router.workers: N` started through the
daemon's own EmbeddedRouter (a socket per worker, the table pushed to every one), its CPU
placement, and how the kernel split the requests between the workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shipyard.devtools.demo import free_port
from shipyard.errors import ShipyardError
from shipyard.router.table import RoutingTable

_STARTED: list[tuple[Any, Path, str]] = []


def spread(pid: int, allowed: set[int | None]) -> None:
    """Every thread of `pid` may run on any of `allowed` (router workers: not the load CPU only,
    which they would inherit from this process)."""
    cpus_ = {c for c in allowed if c is not None}
    if not cpus_:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus_)


async def start_embedded_workers(table: RoutingTable, service: str, workers: int = 2) -> tuple[int, list[int]]:
    """`router.workers: N` as the daemon runs it: EmbeddedRouter binds a socket per worker, starts
    them and pushes the table to every one; (port, worker pids). Stopped by `stop_embedded_workers`."""
    from shipyard.paths import StatePaths
    from shipyard.router.embedded import EmbeddedRouter
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="sywk"))    # short: unix socket paths are ~100 bytes at most
    router = EmbeddedRouter(StatePaths(root).ensure())
    _STARTED.append((router, root, service))
    await router.ensure(service, f"127.0.0.1:{port}", workers=workers)
    await router.apply(table)
    pids = sorted(router.pids(service) - {os.getpid()})
    if len(pids) != workers:
        raise ShipyardError(f"expected {workers} router workers, found {pids}")
    return port, pids


async def worker_split() -> list[int] | None:
    """Requests each worker relayed so far (None: no workers started)."""
    if not _STARTED:
        return None
    router, _root, service = _STARTED[0]
    return [w["requests"] for w in (await router.stats(service))["workers"]]


async def stop_embedded_workers() -> None:
    while _STARTED:
        router, root, service = _STARTED.pop()
        try:
            await router.stop(service)
        finally:
            shutil.rmtree(root, ignore_errors=True)


