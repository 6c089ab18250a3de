"""A router re-adopted by a restarted daemon still costs only its in-flight requests when
it is killed -9: the new daemon took a copy of its listening socket back over the control
socket, so new connections wait in the kernel backlog for the next router (0 refused).
HAProxy: the new daemon takes copies of its listeners over the admin socket (`_getsocks`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from test_faults import router_pid
from test_router_crash import Load, _events, _worker
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker, deploy

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_router_readopted_after_a_daemon_restart_refuses_no_connection_when_killed(
        state_dir: Path, make_spec: SpecMaker, listen: str, kind: str) -> None:
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    workers: list[asyncio.Task[None]] = []
    try:
        await deploy(api, make_spec("v2", **{"router.kind": kind}))
        pid = router_pid(state_dir, kind=kind)
        await api.aclose()
        daemon.stop()                                  # SIGTERM: the router and instances keep running
        daemon = DaemonProcess(state_dir).start()      # re-adopts the router, which keeps its pid
        api = AsyncApiClient(daemon.paths)
        log = daemon.paths.daemon_log
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "took over the listening socket" not in log.read_text():
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert router_pid(state_dir, kind=kind) == pid, "the restarted daemon replaced the router instead of re-adopting it"

        host, _, port = listen.rpartition(":")
        load = Load(host, int(port))
        workers = [asyncio.create_task(_worker(load, keep_alive=i % 2 == 0)) for i in range(8)]
        await asyncio.sleep(1.5)
        assert load.done and not load.failed and not load.refused, (load.failed, load.refused)
        t_kill = time.monotonic()
        os.killpg(pid, signal.SIGKILL) if kind == "haproxy" else os.kill(pid, signal.SIGKILL)
        t_killed = time.monotonic()
        deadline = t_kill + 10
        while time.monotonic() < deadline and not any(s > t_killed for s, _e in load.done):
            await asyncio.sleep(0.05)
        load.stop_at = time.monotonic() + 1.0
        await asyncio.wait_for(asyncio.gather(*workers), 30)

        in_flight = sum(1 for s, e in [*load.done, *((s, e) for s, e, _w in load.failed)]
                        if s <= t_killed and e >= t_kill)
        assert load.refused == 0, f"{load.refused} connection attempts refused while the router restarted"
        assert len(load.failed) <= in_flight, f"{len(load.failed)} failed, {in_flight} in flight: {load.failed}"
        back = min((e for s, e in load.done if s > t_killed), default=None)
        assert back is not None and back - t_kill < 6.0, "the service did not answer again within 6 s of the kill"
        assert router_pid(state_dir, kind=kind) != pid
        events = await _events(api, "router.restarted")
        assert len(events) == 1 and f"pid {pid}" in events[0]["message"], events
        print(f"{len(load.done)} answered, {len(load.failed)} failed ({in_flight} in flight), "
              f"{load.refused} refused; answering again {back - t_kill:.2f}s after the kill")
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await api.aclose()
        daemon.stop()
