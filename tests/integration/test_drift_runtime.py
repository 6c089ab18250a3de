"""Drift against real processes and sockets: instances started by LocalRuntime from a real
materialised image, a stray http.server, an instance nobody recorded, and a whole
scan_service over them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from shipyard.drift import ServiceInputs, expected_process, scan_service
from shipyard.drift.baseline import BaselineStore
from shipyard.drift.listeners import listening_sockets
from shipyard.drift.processes import ExpectedProcess, process_findings
from shipyard.drift.unmanaged import unmanaged_instances, unmanaged_listeners
from shipyard.images import BuildInput, Image, ImageStore
from shipyard.rollout.records import Instance, LaunchSpec, ServiceRecord, Slot, SlotState
from shipyard.runtime.local import LocalRuntime, read_proc_stat
from shipyard.runtime.ports import allocate_port

pytestmark = pytest.mark.timeout(30)

SECRET = "s3cr3t-value-never-shown"
APP = "import sys, time\nprint('up', sys.argv, flush=True)\ntime.sleep(120)\n"
COMMAND = [sys.executable, "app.py", "--port", "${PORT}"]
ENV = {"LOG_LEVEL": "info", "DB_PASSWORD": SECRET}
SECRETS = ["DB_PASSWORD"]
Built = tuple[ImageStore, Image, Path]


@pytest.fixture
async def image(tmp: Path) -> Built:
    src = tmp / "src"
    src.mkdir()
    (src / "app.py").write_text(APP)
    (src / "conf.toml").write_text("greeting = 'hello'\n")
    store = ImageStore(tmp / "images")
    img = await store.build(BuildInput("shop", src, run_command=COMMAND, run_env={"LOG_LEVEL": "info"}))
    return store, img, store.materialize(img.id)


class Procs:
    """Every process a test starts, killed with its group at the end whatever happened."""

    def __init__(self) -> None:
        self.runtime = LocalRuntime()
        self.instances: list[Instance] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    async def start(self, tmp: Path, tree: Path, image_id: str, iid: str, command: list[str] | None = None,
                    env: dict[str, str] | None = None) -> Instance:
        inst = await self.runtime.start(LaunchSpec(
            instance_id=iid, service="shop", slot="blue", image_id=image_id, tree=tree,
            command=command or list(COMMAND), env=env if env is not None else dict(ENV),
            instance_dir=tmp / "instances" / iid))
        self.instances.append(inst)
        return inst

    def kill(self, inst: Instance) -> None:
        st = read_proc_stat(inst.pid)
        if st is not None and st.start_time == inst.start_time:
            try:
                os.killpg(inst.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.runtime.is_alive(inst) and time.monotonic() < deadline:  # reaps our child
            time.sleep(0.01)

    def cleanup(self) -> None:
        for inst in self.instances:
            self.kill(inst)
        for p in self.popens:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


@pytest.fixture
async def procs() -> AsyncIterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


def stray_http_server(procs: Procs, cwd: Path, port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.popens.append(p)
    deadline = time.monotonic() + 10
    while not listening_sockets([port]):
        assert p.poll() is None and time.monotonic() < deadline, "http.server did not start"
        time.sleep(0.02)
    return p


def expected_for(inst: Instance, tree: Path) -> ExpectedProcess:
    return expected_process(inst, COMMAND, ENV, tree, SECRETS)


async def wait_running(inst: Instance) -> None:
    """Until the app itself runs (past any launcher or sandbox wrapper that execs it)."""
    deadline = time.monotonic() + 10
    while "up [" not in Path(inst.log_path).read_text():
        assert time.monotonic() < deadline, Path(inst.log_path).read_text()
        await asyncio.sleep(0.01)


# -- process drift ---------------------------------------------------------------------------

async def test_process_as_started_is_clean(tmp: Path, image: Built, procs: Procs) -> None:
    _, img, tree = image
    inst = await procs.start(tmp, tree, img.id, "shop-blue-000001")
    await wait_running(inst)
    assert process_findings(inst, expected_for(inst, tree)) == []


async def test_killed_process_is_gone(tmp: Path, image: Built, procs: Procs) -> None:
    _, img, tree = image
    inst = await procs.start(tmp, tree, img.id, "shop-blue-000002")
    await wait_running(inst)
    procs.kill(inst)
    [f] = process_findings(inst, expected_for(inst, tree))
    assert (f.kind, f.instance_id, f.evidence["change"]) == ("process", inst.id, "gone")
    # a recycled pid (same number, other start time) is not our process either
    alive = await procs.start(tmp, tree, img.id, "shop-blue-000003")
    await wait_running(alive)
    [g] = process_findings(replace(alive, start_time=alive.start_time - 1), expected_for(alive, tree))
    assert g.evidence["change"] == "gone" and "another process" in g.detail


async def test_other_argv_and_env_is_process_drift(tmp: Path, image: Built, procs: Procs) -> None:
    _, img, tree = image
    tampered_env = {"LOG_LEVEL": "debug", "DB_PASSWORD": "other-" + SECRET, "INJECTED": "1"}
    inst = await procs.start(tmp, tree, img.id, "shop-blue-000004", command=COMMAND + ["--debug"],
                             env=tampered_env)
    await wait_running(inst)
    [f] = process_findings(inst, expected_for(inst, tree))
    assert f.kind == "process" and f.instance_id == inst.id
    assert f.evidence["argv"]["actual"][-1] == "--debug"
    assert f.evidence["env_extra"] == ["INJECTED"]
    assert f.evidence["env_changed"] == {"LOG_LEVEL": {"expected": "info", "actual": "debug"}}
    assert SECRET not in json.dumps(f.to_dict())  # the secret differs, but only names are compared


async def test_program_found_on_path_is_not_drift(tmp: Path, image: Built, procs: Procs) -> None:
    """`python3` resolved on PATH (a pyenv shim on this machine, a binary elsewhere)."""
    _, img, tree = image
    command = ["python3", "app.py", "--port", "${PORT}"]
    inst = await procs.start(tmp, tree, img.id, "shop-blue-000005", command=command)
    await wait_running(inst)
    assert process_findings(inst, expected_process(inst, command, ENV, tree, SECRETS)) == []


# -- unmanaged -------------------------------------------------------------------------------

async def test_stray_http_server_on_a_managed_port(tmp: Path, procs: Procs) -> None:
    port = allocate_port()
    stray = stray_http_server(procs, tmp, port)
    [f] = unmanaged_listeners("shop", {port}, known_pids=set())
    assert f.kind == "unmanaged" and f.evidence["pids"] == [stray.pid] and f.evidence["port"] == port
    assert "http.server" in f.evidence["processes"][0]["argv"]
    assert unmanaged_listeners("shop", {port}, known_pids={stray.pid}) == []
    assert unmanaged_listeners("shop", {port}, known_pids=set(), known_groups={stray.pid}) == []
    assert unmanaged_listeners("shop", {allocate_port()}, known_pids=set()) == []


async def test_instance_without_a_record(tmp: Path, image: Built, procs: Procs) -> None:
    _, img, tree = image
    inst = await procs.start(tmp, tree, img.id, "shop-blue-00000a")
    await wait_running(inst)
    root = tmp / "instances"
    [f] = unmanaged_instances("shop", {}, root)
    assert (f.kind, f.instance_id, f.evidence["pids"]) == ("unmanaged", inst.id, [inst.pid])
    assert "no record" in f.detail
    assert unmanaged_instances("shop", {inst.id: (inst, "healthy")}, root) == []
    [g] = unmanaged_instances("shop", {inst.id: (inst, "stopped")}, root)
    assert "recorded as stopped" in g.detail
    assert unmanaged_instances("shop", {}, tmp / "another-state-dir" / "instances") == []
    assert unmanaged_instances("other-service", {}, root) == []


# -- a whole scan ----------------------------------------------------------------------------

async def test_scan_service_end_to_end(tmp: Path, image: Built, procs: Procs) -> None:
    store, img, tree = image
    listen = allocate_port()
    insts = [await procs.start(tmp, tree, img.id, f"shop-blue-00000{i}") for i in (6, 7)]
    for inst in insts:
        await wait_running(inst)
    svc = ServiceRecord("shop", f"127.0.0.1:{listen}", active_slot="blue")
    svc.slots["blue"] = Slot(SlotState.LIVE, img.id, {"replicas": 2})
    baselines = BaselineStore(tmp / "baselines")

    def inputs() -> ServiceInputs:
        return ServiceInputs(svc, [(i, "healthy") for i in insts],
                             expected={i.id: expected_for(i, tree) for i in insts}, instances_root=tmp / "instances")

    clean = await scan_service(inputs(), store, "full", baselines)
    assert clean.clean and clean.exit_code == 0, clean.to_dict()
    assert clean.instances_scanned == 2 and clean.files_checked == 2 and clean.bytes_hashed > 0

    os.chmod(tree / "conf.toml", 0o644)
    (tree / "conf.toml").write_text("greeting = 'pwned'\n")
    os.chmod(tree / "conf.toml", 0o444)
    stray = stray_http_server(procs, tmp, listen)
    procs.kill(insts[1])
    report = await scan_service(inputs(), store, "metadata", baselines)
    assert report.exit_code == 2
    got = {(f.kind, f.instance_id, f.evidence.get("change")) for f in report.findings}
    assert ("content", insts[0].id, "content") in got and ("content", insts[1].id, "content") in got
    assert next(f for f in report.findings if f.kind == "content").paths == ["conf.toml"]
    assert ("process", insts[1].id, "gone") in got
    assert ("release", None, "too_few_instances") in got
    assert ("unmanaged", None, "listener") in got
    listener = next(f for f in report.findings if f.evidence.get("change") == "listener")
    assert listener.evidence["pids"] == [stray.pid] and listener.evidence["port"] == listen
    text = json.dumps(report.to_dict())
    assert SECRET not in text
