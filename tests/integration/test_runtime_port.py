"""The Runtime port's promises, checked on each adapter with real processes: LocalRuntime on
this machine and SshRuntime on a namespace host with its own sshd (support/runtime_sides.py).
Start healthy, serve and stop gracefully; stop twice; SIGKILL after the grace period; a child
outliving its leader; pid + start time identity; re-adoption by a second runtime; exit codes;
a crash at start explained by the log's tail; a missing command refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import RuntimeFailure
from shipyard.rollout.records import Instance
from shipyard.runtime.health import probe, wait_healthy
from shipyard.runtime.local import live_group_members, read_proc_stat
from support.netns_hosts import NetnsFleet, made_by, unusable_reason
from support.runtime_sides import LocalSide, SshSide

pytestmark = pytest.mark.timeout(60)

SHOP_APP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "app"


@pytest.fixture(params=["local", "ssh"])
async def side(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Any]:
    if request.param == "local":
        local = LocalSide(tmp)
        try:
            yield local
        finally:
            await local.close()
        return
    reason = unusable_reason()
    if reason:
        pytest.skip(reason)
    with NetnsFleet(1) as fleet:
        ssh = SshSide(tmp, fleet)
        try:
            yield await ssh.open()
        finally:
            await ssh.close()
    assert made_by(fleet.token) == {"netns": [], "links": [], "dirs": [], "processes": []}


def make_tree(tmp: Path, files: dict[str, str]) -> Path:
    tree = tmp / "tree"
    tree.mkdir(exist_ok=True)
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    return tree


def shop_tree(tmp: Path, version: str = "1", greeting: str = "hello") -> Path:
    tree = tmp / "tree"
    shutil.copytree(SHOP_APP, tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "release.toml").write_text(f'version = "{version}"\ngreeting = "{greeting}"\n')
    return tree


def shop_cmd(side: Any) -> list[str]:
    return [side.py, "-m", "shop", "--host", side.address, "--port", "${PORT}"]


async def get(host: str, port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def healthy(rt: Any, inst: Instance, deadline: float = 10) -> tuple[bool, str]:
    return await wait_healthy(inst, path="/healthz", interval=0.05, timeout=1, healthy_threshold=2,
                              deadline_s=deadline, is_alive=rt.is_alive, exit_code=rt.exit_code,
                              log_tail=rt.log_tail)


async def wait_for_file(side: Any, path: str, seconds: float = 5) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = await side.read(path)
        if text and text.strip():
            return text
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


async def wait_ended(rt: Any, inst: Instance, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while rt.is_alive(inst) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def log_of(side: Any, inst: Instance) -> str:
    return await side.read(inst.log_path) or ""


# -- the shop through the runtime -------------------------------------------------------------


async def test_shop_starts_healthy_serves_its_version_and_stops_gracefully(side: Any, tmp: Path) -> None:
    rt = side.runtime
    inst = await side.start(await side.launch(shop_tree(tmp, "7", "ahoy"), shop_cmd(side)))
    assert inst.host == side.address and inst.port > 0 and rt.is_alive(inst)
    assert inst.data_dir == side.data_dir("shop-1")
    assert await side.read(f"{inst.data_dir}/../log") is not None   # the log is there, beside data/

    ok, why = await healthy(rt, inst)
    assert ok, why
    assert (await probe(inst.host, inst.port, "/healthz", 1)).status == 200
    status, headers, body = await get(inst.host, inst.port, "/")
    assert status == 200
    assert headers["x-shop-version"] == "7" and headers["x-shop-instance"] == "shop-1"
    assert json.loads(body) == {"service": "shop", "version": "7", "greeting": "ahoy", "instance": "shop-1"}

    began = time.monotonic()
    await rt.stop(inst, timeout=5)
    assert time.monotonic() - began < 1.5
    assert not rt.is_alive(inst) and await side.pid_gone(inst.pid)
    assert rt.exit_code(inst) == 0
    visits = json.loads(await wait_for_file(side, f"{inst.data_dir}/visits.json"))
    assert visits["total"] == 1 and visits["version"] == "7"

    log = await log_of(side, inst)
    assert "shop: version 7 instance shop-1 listening" in log and "stopped after" in log
    if side.kind == "local":
        assert log.startswith(f"--- shipyard: starting shop-1 pid={inst.pid} at ")
        assert f"--- shipyard: stopped shop-1 pid={inst.pid} by SIGTERM" in log and "exit code 0" in log
    else:   # the host's supervisor writes these
        assert f"--- shipyard: started shop-1 pid={inst.pid} at " in log
        assert f"--- shipyard: shop-1 pid={inst.pid} exited with code 0" in log


async def test_stop_is_idempotent(side: Any, tmp: Path) -> None:
    inst = await side.start(await side.launch(shop_tree(tmp), shop_cmd(side)))
    await side.runtime.stop(inst, timeout=5)
    await side.runtime.stop(inst, timeout=5)
    assert not side.runtime.is_alive(inst)
    ended = "--- shipyard: stopped" if side.kind == "local" else "exited with code"
    assert (await log_of(side, inst)).count(ended) == 1


# -- stopping stubborn processes ---------------------------------------------------------------

IGNORES_TERM = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # inherited by the child: it ignores TERM too
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(os.path.join(os.environ["SHIPYARD_DATA_DIR"], "child.pid"), "w") as f:
    f.write(str(child.pid))
print("ignoring SIGTERM", flush=True)
time.sleep(60)
"""

CHILD_IGNORES_TERM = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(os.environ["SHIPYARD_DATA_DIR"], "child.pid"), "w") as f:
    f.write(str(os.getpid()))  # only once TERM is ignored
time.sleep(60)
"""

LEADER_EXITS_CHILD_STAYS = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {CHILD_IGNORES_TERM!r}])
time.sleep(60)
"""


async def test_sigterm_ignoring_process_and_its_child_are_killed_after_timeout(side: Any, tmp: Path) -> None:
    rt = side.runtime
    inst = await side.start(await side.launch(make_tree(tmp, {"stubborn.py": IGNORES_TERM}),
                                              [side.py, "stubborn.py"]))
    child = int(await wait_for_file(side, f"{inst.data_dir}/child.pid"))
    if side.kind == "local":
        assert read_proc_stat(child) is not None and read_proc_stat(child).pgrp == inst.pid  # type: ignore[union-attr]
    assert not await side.pid_gone(child)

    began = time.monotonic()
    await rt.stop(inst, timeout=0.5)
    elapsed = time.monotonic() - began
    assert 0.5 <= elapsed < 3
    assert not rt.is_alive(inst) and await side.pid_gone(inst.pid) and await side.pid_gone(child)
    assert rt.exit_code(inst) == -signal.SIGKILL
    if side.kind == "local":
        assert "by SIGKILL after 0.5s grace" in await log_of(side, inst)
    else:
        assert f"pid={inst.pid} exited with code -9" in await log_of(side, inst)


async def test_child_outliving_its_leader_is_stopped_too(side: Any, tmp: Path) -> None:
    rt = side.runtime
    inst = await side.start(await side.launch(make_tree(tmp, {"leader.py": LEADER_EXITS_CHILD_STAYS}),
                                              [side.py, "leader.py"]))
    child = int(await wait_for_file(side, f"{inst.data_dir}/child.pid"))
    await rt.stop(inst, timeout=0.3)
    assert await side.pid_gone(inst.pid) and await side.pid_gone(child)
    assert rt.exit_code(inst) == -signal.SIGTERM  # the leader died of TERM, its child needed KILL
    if side.kind == "local":
        assert live_group_members(inst.pid) == []


# -- identity: pid + start time ----------------------------------------------------------------

SLEEPER = "import time; time.sleep(60)\n"


async def test_wrong_start_time_is_not_alive_and_not_signalled(side: Any, tmp: Path) -> None:
    rt = side.runtime
    inst = await side.start(await side.launch(make_tree(tmp, {"sleep.py": SLEEPER}), [side.py, "sleep.py"]))
    impostor = dataclasses.replace(inst, start_time=inst.start_time - 1)  # same pid, "another" process
    other = await side.second_runtime()
    await side.settle(rt, impostor)
    await side.settle(other, impostor)
    assert not rt.is_alive(impostor)
    assert not other.is_alive(impostor)
    await rt.stop(impostor, timeout=0.2)
    await other.stop(impostor, timeout=0.2)
    await asyncio.sleep(0.1)
    await side.settle(rt, inst)
    assert rt.is_alive(inst), "a process with another start time must never be signalled"
    assert rt.exit_code(inst) is None
    log = await log_of(side, inst)
    assert "stopped" not in log and "exited" not in log


async def test_second_runtime_readopts_and_stops_an_instance(side: Any, tmp: Path) -> None:
    rt = side.runtime
    inst = await side.start(await side.launch(shop_tree(tmp), shop_cmd(side)))
    assert (await healthy(rt, inst))[0]
    restarted = await side.second_runtime()  # as after a controller restart: the process is not its child
    revived = Instance.from_dict(json.loads(json.dumps(inst.to_dict())))
    await side.settle(restarted, revived)
    assert restarted.is_alive(revived)
    await restarted.stop(revived, timeout=5)
    await side.settle(rt, inst)
    assert not restarted.is_alive(revived) and not rt.is_alive(inst)  # `rt` reaps its child (local)
    assert await side.pid_gone(inst.pid)
    assert rt.exit_code(inst) == 0
    if side.kind == "local":
        assert restarted.exit_code(revived) is None
        assert "exit code unknown (not started by this daemon)" in await log_of(side, inst)
    else:   # the host's supervisor recorded it: known to any controller
        assert restarted.exit_code(revived) == 0


async def test_process_that_exits_on_its_own_is_reaped(side: Any, tmp: Path) -> None:
    rt = side.runtime
    inst = await side.start(await side.launch(make_tree(tmp, {"x.py": "raise SystemExit(3)\n"}),
                                              [side.py, "x.py"]))
    await wait_ended(rt, inst)
    assert not rt.is_alive(inst) and rt.exit_code(inst) == 3
    assert await side.pid_gone(inst.pid)


async def test_exit_at_start_fails_wait_healthy_with_log_tail(side: Any, tmp: Path) -> None:
    crash = "import sys\nprint('loading config')\nprint('boom: config/app.toml missing', file=sys.stderr)\nsys.exit(1)\n"
    inst = await side.start(await side.launch(make_tree(tmp, {"crash.py": crash}), [side.py, "crash.py"]))
    began = time.monotonic()
    ok, why = await healthy(side.runtime, inst, deadline=10)
    assert not ok and time.monotonic() - began < 5
    assert why.startswith("process exited (code 1) before becoming healthy; last log lines:")
    assert "boom: config/app.toml missing" in why and "loading config" in why


async def test_missing_commands_raise_runtime_failure(side: Any, tmp: Path) -> None:
    tree = make_tree(tmp, {"bin/not-executable": "#!/bin/sh\n"})
    with pytest.raises(RuntimeFailure, match="shipyard-no-such-command"):
        await side.start(await side.launch(tree, ["shipyard-no-such-command", "x"]))
    with pytest.raises(RuntimeFailure, match="bin/app"):
        await side.start(await side.launch(tree, ["bin/app"]))
    with pytest.raises(RuntimeFailure, match="bin/not-executable"):
        await side.start(await side.launch(tree, ["bin/not-executable"]))
    assert side.started == []
