"""The namespace hosts themselves: nothing of theirs survives the test that made them, what a
killed run left behind is swept at the next start, and 100 of them come up and answer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ssh_support import need_namespaces, options_for, targets

from shipyard.runtime.ssh.connections import SshConnections
from support.netns_hosts import NetnsFleet, made_by, running, sweep_stale

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parents[2]
CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from support.netns_hosts import NetnsFleet
f = NetnsFleet(2).start()
print(f.token, flush=True)
time.sleep(600)
"""


def nothing_left(token: str) -> None:
    left = made_by(token)
    assert left == {"netns": [], "links": [], "dirs": [], "processes": []}, left
    assert token not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert token not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def run_everywhere(fleet: NetnsFleet, argv: list[str]) -> list[bytes]:
    async with SshConnections(options_for(fleet)) as pool:
        return [r.stdout for r in await asyncio.gather(*(pool.host(t).run(argv) for t in targets(fleet)))]


def test_a_failing_test_leaves_no_namespace_bridge_process_or_dir() -> None:
    need_namespaces()
    with pytest.raises(RuntimeError, match="the test failed"), NetnsFleet(3) as fleet:
        token = fleet.token
        # a process that escaped its SSH session, as an instance started by the remote helper does
        # (its fds must leave the channel's pipes, or the channel stays open as long as it runs)
        asyncio.run(run_everywhere(fleet, ["sh", "-c", "setsid -f sleep 600 </dev/null >/dev/null 2>&1"]))
        pids = [p for h in fleet.hosts for p in h.pids()]
        assert len(pids) >= 3 * 4 and fleet.dir.is_dir()
        raise RuntimeError("the test failed")
    nothing_left(token)
    assert not [p for p in pids if running(p)]
    assert not fleet.dir.exists()


def test_sweeper_removes_what_a_killed_run_left_and_spares_a_live_run() -> None:
    need_namespaces()
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(TESTS))], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        dead_token = child.stdout.readline().strip()
        assert made_by(dead_token)["netns"], "the child made no hosts"
    finally:
        os.killpg(child.pid, signal.SIGKILL)      # no cleanup runs: as when CI kills a job
        child.wait()
    left = made_by(dead_token)
    assert len(left["netns"]) == 2 and len(left["links"]) == 3 and left["processes"] and left["dirs"]
    with NetnsFleet(2) as live:                   # start() sweeps: the dead run's leftovers go
        nothing_left(dead_token)
        sweep_stale()                             # and a sweep never touches a live run
        assert asyncio.run(run_everywhere(live, ["hostname"])) == [b"h1\n", b"h2\n"]
    nothing_left(live.token)


def test_interrupted_run_cleans_up() -> None:
    need_namespaces()
    code = CHILD.replace("f = NetnsFleet(2).start()", "f = NetnsFleet(2).__enter__()").replace(
        "time.sleep(600)", "try:\n    time.sleep(600)\nfinally:\n    f.close()")
    child = subprocess.Popen([sys.executable, "-c", code.format(tests=str(TESTS))], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    token = child.stdout.readline().strip()
    child.send_signal(signal.SIGINT)              # Ctrl-C in the middle of a test
    child.wait(30)
    nothing_left(token)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hundred_hosts_come_up_connect_and_answer() -> None:
    need_namespaces()
    began = time.monotonic()
    with NetnsFleet(100) as fleet:
        up = fleet.up_seconds

        async def connect_and_run() -> tuple[float, float, list[bytes]]:
            async with SshConnections(options_for(fleet, reconnect_wait=60)) as pool:
                t0 = time.monotonic()
                errors = await pool.connect_all(targets(fleet))
                assert [e for e in errors.values() if e is not None] == []
                t1 = time.monotonic()
                out = await asyncio.gather(*(pool.host(t).run(["hostname"]) for t in targets(fleet)))
                return t1 - t0, time.monotonic() - t1, [r.stdout for r in out]
        connect, run, outputs = asyncio.run(connect_and_run())
        assert outputs == [f"{h.name}\n".encode() for h in fleet.hosts]
        token = fleet.token
    down = time.monotonic() - began - up
    nothing_left(token)
    print(f"100 hosts: up {up:.2f}s, connect all {connect:.2f}s, hostname on all {run:.2f}s, "
          f"torn down {down:.2f}s (includes connect+run)")
    assert up < 30
