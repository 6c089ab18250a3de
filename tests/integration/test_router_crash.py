"""A router killed -9 under load costs only the requests in flight on it: the daemon holds
the listening socket, so new connections wait in the kernel backlog (never ECONNREFUSED)
until the restarted router accepts them; the crash is an event, an audit entry and a counter.
Both routers: HAProxy (master and worker killed) gets the daemon's copy of its sockets back."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from test_faults import router_pid
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker, deploy

pytestmark = pytest.mark.timeout(120)

PACE = 0.04
"""Seconds between one worker's requests: paced load, not a benchmark (2 loaded cores)."""
IO_TIMEOUT = 8.0
"""Per connect and per response: generous, a restart under load may take a few seconds."""


@dataclass
class Load:
    host: str
    port: int
    stop_at: float = float("inf")
    done: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) of each request answered 200."""
    failed: list[tuple[float, float, str]] = field(default_factory=list)
    refused: int = 0


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> bool:
    """One GET; True on a 200 with its whole body. Raises on a connection that breaks."""
    conn = "close" if close else "keep-alive"
    writer.write(f"GET / HTTP/1.1\r\nHost: shop\r\nConnection: {conn}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"), 0)
    await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)
    return lines[0].split(" ")[1] == "200"


async def _connect(load: Load) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(asyncio.open_connection(load.host, load.port), IO_TIMEOUT)
    except ConnectionRefusedError:
        load.refused += 1
        raise


async def _worker(load: Load, keep_alive: bool) -> None:
    """Requests at a steady pace. A keep-alive connection that breaks before the request
    got any answer is retried once on a new connection, as HTTP clients do with a reused
    connection; every connection refused is counted, retries included."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while time.monotonic() < load.stop_at:
        start = time.monotonic()
        reused = conn is not None
        ok, why = False, ""
        for _attempt in (1, 2):
            try:
                if conn is None:
                    conn = await _connect(load)
                ok = await _exchange(*conn, close=not keep_alive)
                why = "" if ok else "status"
                break
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                why = repr(e)
                if conn is not None:
                    conn[1].close()
                conn = None
                if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
                    break
                if not reused:
                    break
                reused = False
        if not keep_alive and conn is not None:
            conn[1].close()
            conn = None
        end = time.monotonic()
        if ok:
            load.done.append((start, end))
        else:
            load.failed.append((start, end, why))
        await asyncio.sleep(max(0.0, PACE - (end - start)))
    if conn is not None:
        conn[1].close()


async def _events(api: AsyncApiClient, kind: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in (await api.get("/v1/services/shop/events"))["events"] if e["kind"] == kind]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def _metrics(daemon: DaemonProcess) -> str:
    url = json.loads(daemon.paths.api.read_text())["url"]
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"{url}/metrics")).text


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_router_kill_refuses_no_connection_and_is_recorded(api: AsyncApiClient, daemon: DaemonProcess,
                                                                  make_spec: SpecMaker, listen: str,
                                                                  kind: str) -> None:
    await deploy(api, make_spec("v2", **{"router.kind": kind}))
    host, _, port = listen.rpartition(":")
    load = Load(host, int(port))
    workers = [asyncio.create_task(_worker(load, keep_alive=i % 2 == 0)) for i in range(8)]
    try:
        await asyncio.sleep(1.5)
        assert load.done and not load.failed and not load.refused, (load.failed, load.refused)
        pid = router_pid(Path(daemon.paths.root), kind=kind)
        t_kill = time.monotonic()
        os.killpg(pid, signal.SIGKILL) if kind == "haproxy" else os.kill(pid, signal.SIGKILL)
        t_killed = time.monotonic()
        deadline = t_kill + 10
        while time.monotonic() < deadline and not any(s > t_killed for s, _e in load.done):
            await asyncio.sleep(0.05)
        load.stop_at = time.monotonic() + 1.0      # a little more load on the new router, then stop
        await asyncio.wait_for(asyncio.gather(*workers), 3 * IO_TIMEOUT)
    finally:
        for w in workers:
            w.cancel()
    in_flight = sum(1 for s, e in [*load.done, *((s, e) for s, e, _w in load.failed)] if s <= t_killed and e >= t_kill)
    assert load.refused == 0, f"{load.refused} connection attempts refused while the router restarted"
    assert len(load.failed) <= in_flight, f"{len(load.failed)} failed, {in_flight} in flight at the kill: {load.failed}"
    back = min((e for s, e in load.done if s > t_killed), default=None)
    assert back is not None and back - t_kill < 6.0, "the service did not answer again within 6 s of the kill"
    assert router_pid(Path(daemon.paths.root), kind=kind) != pid

    events = await _events(api, "router.restarted")
    assert len(events) == 1 and events[0]["data"]["signal"] == "SIGKILL", events
    assert f"pid {pid}" in events[0]["message"]
    audit = (await api.get("/v1/audit?service=shop"))["audit"]
    assert any(a["action"] == "router.restart" and a["actor"] == "shipyard-daemon" for a in audit), audit
    assert 'shipyard_router_restarts_total{service="shop"} 1.0' in (await _metrics(daemon)).splitlines()
