"""A full disk or a locked state database, with the real daemon, router and instances:
the API keeps answering, the rollout stays driven at its last recorded step and goes on
once the store writes again (no daemon restart), each cause is said once in the log
(no traceback, no "--- Logging error ---"), and traffic through the router never fails.

The whole state directory is a small tmpfs this module mounts (and always unmounts), so
"full" is the real ENOSPC of every file the daemon writes there: state.db, daemon.log,
the router's table and log, instance logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from shipyard.errors import ShipyardError, StoreUnavailable
from support import SpecMaker, deploy
from support.procs import kill_everything_under, processes_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The state directory on its own 48 MiB tmpfs (overrides conftest's plain temp dir)."""
    d = Path(tempfile.mkdtemp(prefix="sy-full"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(d)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield d
    finally:
        kill_everything_under(d)
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system has no block left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 512):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    f.write(block)
    assert os.statvfs(directory).f_bavail == 0
    return filler


async def ping_ms(url: str, client: httpx.AsyncClient) -> float:
    t0 = time.monotonic()
    r = await client.get(f"{url}/v1/ping")
    assert r.status_code == 200
    return (time.monotonic() - t0) * 1000


async def ping_while(url: str, until: asyncio.Event) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=30) as c:
        while not until.is_set():
            out.append(await ping_ms(url, c))
            await asyncio.sleep(0.05)
    return out


def _metrics_text(url: str) -> str:
    resp = httpx.get(f"{url}/metrics", timeout=10)
    resp.raise_for_status()
    return resp.text


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


async def timed(call: Awaitable[object]) -> tuple[float, object]:
    t0 = time.monotonic()
    try:
        out = await call
    except ShipyardError as e:
        out = e
    return time.monotonic() - t0, out


def sy(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    """The Python CLI, as a user runs it against this daemon."""
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "300"})


def daemon_lines(dp: DaemonProcess) -> str:
    return dp.paths.daemon_log.read_text(errors="replace")


async def test_a_full_state_disk_holds_the_rollout_and_it_goes_on_once_space_is_freed(
        state_dir: Path, daemon: DaemonProcess, api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    v2 = make_spec("v2", "v2-manual", **{"strategy.blue_green.auto_promote": False})
    v1_again = make_spec("v1", "v1-again")
    r = (await api.post("/v1/deploy", {"spec_path": str(v2)}))["rollout"]
    deadline = time.monotonic() + 60
    while (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["phase"] != "awaiting_promotion":
        assert time.monotonic() < deadline, "v2 never reached awaiting_promotion"
        await asyncio.sleep(0.1)
    url = json.loads(daemon.paths.api.read_text())["url"]

    async with Traffic(f"http://{listen}", clients=4, pause=0.02) as traffic:
        await asyncio.sleep(0.5)
        filler = fill(state_dir)
        # the switch cannot be recorded: the promote answers 503 within ~2 s, and is not taken
        seconds, out = await timed(api.post("/v1/services/shop/promote", {}))
        assert isinstance(out, StoreUnavailable), out
        assert seconds < 4, seconds
        assert f"no space left on device writing {state_dir}/state.db" in out.message
        assert "the command is queued" in out.message, out.message
        assert f"free space in {state_dir}" in (out.hint or "")
        # the API answers, reads work, the rollout is still the one in progress, held at its step
        async with httpx.AsyncClient(timeout=30) as c:
            pings = [await ping_ms(url, c) for _ in range(20)]
        assert max(pings) < 500, pings
        for _ in range(30):                  # 6 s of the outage: supervisor ticks, driver retries
            svc = await api.get("/v1/services/shop")
            held = svc["rollout"]
            assert held["id"] == r["id"] and held["phase"] == "awaiting_promotion"
            assert held["driven"] is True, held                          # not an orphan
            assert "no space left on device" in (held["held"] or ""), held
            await asyncio.sleep(0.2)
        status = await asyncio.to_thread(sy, "status", "shop", state=state_dir)
        assert status.returncode == 0 and "held at this step: no space left on device" in status.stdout, status
        assert "2" not in {s.version for s in traffic.samples}     # no switch without its record
        filler.unlink()
        done = await api.wait_rollout(r["id"], timeout=60)          # the queued promote, no restart
        assert done["phase"] == "succeeded", done
        await asyncio.sleep(1.5)    # the store logs its recovery with a write past its quiet second
    assert traffic.failures() == [], traffic.failures()[:5]
    assert len(traffic.samples) > 100
    print(f"full disk: promote answered 503 in {seconds:.2f} s, ping max {max(pings):.1f} ms,"
          f" {len(traffic.samples)} requests through the router, 0 failed")
    assert traffic.versions().get("2", 0) > 0

    # the service takes a new deploy, and a rollback, as if nothing had happened
    assert (await deploy(api, v1_again))["phase"] == "succeeded"
    back = (await api.post("/v1/services/shop/rollback", {}))["rollout"]
    assert (await api.wait_rollout(back["id"], timeout=60))["phase"] == "succeeded"
    assert daemon.proc is not None and daemon.proc.poll() is None

    log = daemon_lines(daemon)
    said = [line for line in log.splitlines() if f"no space left on device writing {state_dir}/state.db" in line
            and "shipyard.store" in line]
    assert len(said) == 1, "\n".join(x[:160] for x in log.splitlines() if " ERROR | WARNING " in x or "store" in x)  # once, not per second
    assert "writable again" in log, "\n".join(x[:200] for x in log.splitlines() if "shipyard.store" in x or "shipyard.driver" in x)
    out_text = daemon.output.read_text(errors="replace")
    for text in (log, out_text):
        assert "Traceback" not in text and "--- Logging error ---" not in text


async def test_a_disk_that_fills_while_instances_start_leaves_no_orphan_and_the_deploy_ends(
        state_dir: Path, daemon: DaemonProcess, api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    """Wherever the outage lands (instances starting, preview, the switch), nothing runs that
    is not recorded, and the deploy goes on by itself once space is freed."""
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    slow = make_spec("v2", "v2-slow", **{"health.healthy_threshold": 10})
    async with Traffic(f"http://{listen}", clients=4, pause=0.02) as traffic:
        r = (await api.post("/v1/deploy", {"spec_path": str(slow)}))["rollout"]
        deadline = time.monotonic() + 60
        while (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["phase"] in ("building", "migrating"):
            assert time.monotonic() < deadline, "v2 was never built"
            await asyncio.sleep(0.05)
        filler = fill(state_dir)
        await asyncio.sleep(5)
        held = (await api.get("/v1/services/shop"))["rollout"]
        assert held["id"] == r["id"] and held["driven"] is True, held
        filler.unlink()
        done = await api.wait_rollout(r["id"], timeout=90)
        assert done["phase"] == "succeeded", done
        await asyncio.sleep(0.5)
    assert traffic.failures() == [], traffic.failures()[:5]
    svc = await api.get("/v1/services/shop")
    recorded = {i["pid"] for s in svc["slots"].values() for i in s["instances"]}
    running = {pid for pid in processes_under(state_dir)
               if b"-m\0shop" in Path(f"/proc/{pid}/cmdline").read_bytes()}
    assert running == recorded and len(recorded) == 4, (running, recorded)   # 2 live v2, 2 warm v1


LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("ROLLBACK")
print("released", flush=True)
"""


async def test_a_foreign_lock_never_freezes_the_api_and_a_rollback_answers_503_within_2_s(
        state_dir: Path, daemon: DaemonProcess, api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"
    v2 = make_spec("v2", "v2-manual", **{"strategy.blue_green.auto_promote": False})
    r = (await api.post("/v1/deploy", {"spec_path": str(v2)}))["rollout"]
    deadline = time.monotonic() + 60
    while (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["phase"] != "awaiting_promotion":
        assert time.monotonic() < deadline, "v2 never reached awaiting_promotion"
        await asyncio.sleep(0.1)
    url = json.loads(daemon.paths.api.read_text())["url"]

    async with Traffic(f"http://{listen}", clients=4, pause=0.02) as traffic:
        locker = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCKER, str(daemon.paths.db), "10",
                                                      stdout=asyncio.subprocess.PIPE)
        try:
            assert locker.stdout is not None
            assert (await asyncio.wait_for(locker.stdout.readline(), 10)).strip() == b"locked"
            stop = asyncio.Event()
            pinger = asyncio.create_task(ping_while(url, stop))
            await asyncio.sleep(1.0)
            seconds, out = await timed(api.post("/v1/services/shop/rollback", {}))
            reads, _ = await timed(api.get("/v1/services/shop"))
            cli = await asyncio.to_thread(sy, "promote", "shop", state=state_dir)   # the CLI says it too
            await asyncio.sleep(0.5)
            stop.set()
            pings = await pinger
            assert (await asyncio.wait_for(locker.stdout.readline(), 20)).strip() == b"released"
        finally:
            with contextlib.suppress(ProcessLookupError):
                locker.kill()
            await locker.wait()
        assert seconds < 2.8, seconds
        assert isinstance(out, StoreUnavailable), out
        assert f"the state database {daemon.paths.db} is locked by another process" in out.message
        assert "the command is queued" in out.message, out.message
        assert "fuser" in (out.hint or "")
        assert reads < 0.5, reads
        assert cli.returncode == StoreUnavailable.exit_code, (cli.returncode, cli.stdout, cli.stderr)
        assert "is locked by another process" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
        assert len(pings) > 20 and p99(pings) < 200, (p99(pings), max(pings), len(pings))
        print(f"during the lock: /v1/ping p99 {p99(pings):.1f} ms, max {max(pings):.1f} ms over {len(pings)};"
              f" rollback answered 503 in {seconds:.2f} s; a read in {reads * 1000:.1f} ms")
        metrics = (await asyncio.to_thread(_metrics_text, url))
        refused = [line for line in metrics.splitlines() if line.startswith('shipyard_store_refusals_total{cause="locked"}')]
        assert refused and float(refused[0].split()[-1]) >= 1, refused
        # once released, the queued rollback (an abort before the switch) is carried out
        done = await api.wait_rollout(r["id"], timeout=60)
        assert done["phase"] == "aborted", done
        await asyncio.sleep(0.5)
    assert traffic.failures() == [], traffic.failures()[:5]
    assert set(traffic.versions()) == {"1"}
    # and the next deploy is taken
    assert (await deploy(api, make_spec("v2")))["phase"] == "succeeded"
