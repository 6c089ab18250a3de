"""The shop's lifecycle: listen, serve until SIGTERM, drain, record visits, exit 0.

Draining is what makes a zero-downtime switch possible from the service's side: once
told to stop it accepts nothing new, answers what it has already received (with
`Connection: close`), closes idle keep-alive connections at once, and is gone well
within a second."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from shop.app import Shop
from shop.protocol import ConnectionSet

DRAIN_SECONDS = 0.8  # in-flight requests get this long; the whole stop stays under 1 s
IDLE_SECONDS = 60.0  # keep-alive connections silent this long are closed
SWEEP_SECONDS = 5.0


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} shop: {message}", flush=True)


async def serve(shop: Shop, host: str, port: int, data_dir: Path | None) -> int:
    release = shop.release
    fixed = f"Server: shop/{release.version}\r\nX-Shop-Version: {release.version}\r\nX-Shop-Instance: {shop.instance}\r\n"
    shared = ConnectionSet(shop.handle, fixed)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening: a stop during start-up still exits 0
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await loop.create_server(shared.factory, host, port, backlog=2048, reuse_address=True)
    except OSError as exc:
        log(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 1
    started = time.monotonic()
    note = f" ({shop.catalog_error})" if shop.catalog_error else ""
    log(
        f"version {release.version} instance {shop.instance} listening on http://{host}:{port} pid={os.getpid()}{note}"
    )

    sweeper = asyncio.create_task(_close_idle_forever(shared))
    await stop.wait()
    sweeper.cancel()

    server.close()  # no new connections
    shared.draining = True  # every further response carries Connection: close
    for conn in list(shared.connections):
        conn.close_if_idle()
    deadline = time.monotonic() + DRAIN_SECONDS
    while shared.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        for conn in list(shared.connections):
            conn.close_if_idle()
    cut = len(shared.connections)
    for conn in list(shared.connections):
        conn.abort()
    total = _record_visits(data_dir, shop)
    uptime = time.monotonic() - started
    log(
        f"version {release.version} instance {shop.instance} stopped after {uptime:.1f}s: "
        f"{shop.visits} visits this run, {total} in total"
        + (f", {cut} unfinished connections cut" if cut else "")
    )
    return 0


async def _close_idle_forever(shared: ConnectionSet) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        cutoff = time.monotonic() - IDLE_SECONDS
        for conn in list(shared.connections):
            if not conn.busy and conn.last_active < cutoff:
                conn.abort()  # idle, or a request that never finished arriving


def _record_visits(data_dir: Path | None, shop: Shop) -> int | str:
    """Add this run's visits to the counter in the instance's writable data directory."""
    if data_dir is None:
        return "unknown (no SHIPYARD_DATA_DIR)"
    path = data_dir / "visits.json"
    try:
        previous = int(json.loads(path.read_text(encoding="utf-8")).get("total", 0))
    except (OSError, ValueError, AttributeError):
        previous = 0
    total = previous + shop.visits
    record = {
        "total": total,
        "last_run": shop.visits,
        "version": shop.release.version,
        "instance": shop.instance,
    }
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        print(f"shop: cannot write {path}: {exc}", file=sys.stderr, flush=True)
    return total
