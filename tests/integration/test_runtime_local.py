"""LocalRuntime against real processes: start, health, stop, re-adoption, pid safety."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.errors import RuntimeFailure
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.health import probe, wait_healthy
from shipyard.runtime.local import LocalRuntime, live_group_members, log_tail, read_proc_stat

pytestmark = pytest.mark.timeout(30)

SHOP_APP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "app"
PY = sys.executable


class TrackingRuntime(LocalRuntime):
    """Remembers what it started so the fixture can kill it whatever the test did."""

    def __init__(self, started: list[Instance]) -> None:
        super().__init__()
        self.started = started

    async def start(self, launch: LaunchSpec) -> Instance:
        inst = await super().start(launch)
        self.started.append(inst)
        return inst


def kill_group_if_ours(inst: Instance) -> None:
    stat = read_proc_stat(inst.pid)
    if stat is None or stat.start_time == inst.start_time:
        try:
            os.killpg(inst.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def started() -> Iterator[list[Instance]]:
    instances: list[Instance] = []
    yield instances
    for inst in instances:
        kill_group_if_ours(inst)


@pytest.fixture
def runtime(started: list[Instance]) -> Iterator[TrackingRuntime]:
    rt = TrackingRuntime(started)
    yield rt
    for inst in started:
        kill_group_if_ours(inst)
    deadline = time.monotonic() + 5
    while any(rt.is_alive(i) for i in started) and time.monotonic() < deadline:  # reaps our children
        time.sleep(0.01)


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


def launch(
    tmp: Path, tree: Path, command: list[str], env: dict[str, str] | None = None, name: str = "shop-1"
) -> LaunchSpec:
    return LaunchSpec(
        instance_id=name,
        service="shop",
        slot="blue",
        image_id="sha256-test",
        tree=tree,
        command=command,
        env=env or {},
        instance_dir=tmp / "instances" / name,
    )


SHOP_CMD = [PY, "-m", "shop", "--port", "${PORT}"]


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def healthy(rt: LocalRuntime, inst: Instance, deadline: float = 10) -> tuple[bool, str]:
    return await wait_healthy(
        inst,
        path="/healthz",
        interval=0.05,
        timeout=1,
        healthy_threshold=2,
        deadline_s=deadline,
        is_alive=rt.is_alive,
        exit_code=rt.exit_code,
    )


async def wait_for_file(path: Path, seconds: float = 5) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def gone(pid: int) -> bool:
    stat = read_proc_stat(pid)
    return stat is None or stat.dead


# -- the shop through the runtime -------------------------------------------------------------


async def test_shop_starts_healthy_serves_its_version_and_stops_gracefully(
    runtime: TrackingRuntime, tmp: Path
) -> None:
    tree = shop_tree(tmp, "7", "ahoy")
    inst = await runtime.start(launch(tmp, tree, SHOP_CMD))
    assert inst.host == "127.0.0.1" and inst.port > 0 and runtime.is_alive(inst)
    assert Path(inst.data_dir).is_dir() and Path(inst.data_dir) == tmp / "instances" / "shop-1" / "data"

    ok, why = await healthy(runtime, inst)
    assert ok, why
    assert (await probe(inst.host, inst.port, "/healthz", 1)).status == 200
    status, headers, body = await get(inst.port, "/")
    assert status == 200
    assert headers["x-shop-version"] == "7" and headers["x-shop-instance"] == "shop-1"
    assert json.loads(body) == {"service": "shop", "version": "7", "greeting": "ahoy", "instance": "shop-1"}

    began = time.monotonic()
    await runtime.stop(inst, timeout=5)
    assert time.monotonic() - began < 1.5
    assert not runtime.is_alive(inst) and gone(inst.pid)
    assert runtime.exit_code(inst) == 0
    visits = json.loads((Path(inst.data_dir) / "visits.json").read_text())
    assert visits["total"] == 1 and visits["version"] == "7"

    log = Path(inst.log_path).read_text()
    assert log.startswith(f"--- shipyard: starting shop-1 pid={inst.pid} at ")
    assert "shop: version 7 instance shop-1 listening" in log and "stopped after" in log
    assert f"--- shipyard: stopped shop-1 pid={inst.pid} by SIGTERM" in log and "exit code 0" in log


async def test_stop_is_idempotent(runtime: TrackingRuntime, tmp: Path) -> None:
    inst = await runtime.start(launch(tmp, shop_tree(tmp), SHOP_CMD))
    await runtime.stop(inst, timeout=5)
    await runtime.stop(inst, timeout=5)
    assert not runtime.is_alive(inst)
    assert Path(inst.log_path).read_text().count("--- shipyard: stopped") == 1


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


async def test_sigterm_ignoring_process_and_its_child_are_killed_after_timeout(
    runtime: TrackingRuntime, tmp: Path
) -> None:
    tree = make_tree(tmp, {"stubborn.py": IGNORES_TERM})
    inst = await runtime.start(launch(tmp, tree, [PY, "stubborn.py"]))
    child = int(await wait_for_file(Path(inst.data_dir) / "child.pid"))
    assert read_proc_stat(child) is not None and read_proc_stat(child).pgrp == inst.pid  # type: ignore[union-attr]

    began = time.monotonic()
    await runtime.stop(inst, timeout=0.5)
    elapsed = time.monotonic() - began
    assert 0.5 <= elapsed < 3
    assert not runtime.is_alive(inst) and gone(inst.pid) and gone(child)
    assert runtime.exit_code(inst) == -signal.SIGKILL
    assert "by SIGKILL after 0.5s grace" in Path(inst.log_path).read_text()


async def test_child_outliving_its_leader_is_stopped_too(runtime: TrackingRuntime, tmp: Path) -> None:
    tree = make_tree(tmp, {"leader.py": LEADER_EXITS_CHILD_STAYS})
    inst = await runtime.start(launch(tmp, tree, [PY, "leader.py"]))
    child = int(await wait_for_file(Path(inst.data_dir) / "child.pid"))
    await runtime.stop(inst, timeout=0.3)
    assert gone(inst.pid) and gone(child)
    assert runtime.exit_code(inst) == -signal.SIGTERM  # the leader died of TERM, its child needed KILL
    assert live_group_members(inst.pid) == []


# -- identity: pid + start time ----------------------------------------------------------------

SLEEPER = "import time; time.sleep(60)\n"


async def test_wrong_start_time_is_not_alive_and_not_signalled(runtime: TrackingRuntime, tmp: Path) -> None:
    inst = await runtime.start(launch(tmp, make_tree(tmp, {"sleep.py": SLEEPER}), [PY, "sleep.py"]))
    impostor = dataclasses.replace(inst, start_time=inst.start_time - 1)  # same pid, "another" process
    assert not runtime.is_alive(impostor)
    assert not LocalRuntime().is_alive(impostor)
    await runtime.stop(impostor, timeout=0.2)
    await LocalRuntime().stop(impostor, timeout=0.2)
    await asyncio.sleep(0.1)
    assert runtime.is_alive(inst), "a process with another start time must never be signalled"
    assert runtime.exit_code(inst) is None
    assert "stopped" not in Path(inst.log_path).read_text()


async def test_second_runtime_readopts_and_stops_an_instance(runtime: TrackingRuntime, tmp: Path) -> None:
    inst = await runtime.start(launch(tmp, shop_tree(tmp), SHOP_CMD))
    assert (await healthy(runtime, inst))[0]
    restarted = LocalRuntime()  # as after a daemon restart: the process is not its child
    revived = Instance.from_dict(json.loads(json.dumps(inst.to_dict())))
    assert restarted.is_alive(revived)
    await restarted.stop(revived, timeout=5)
    assert not restarted.is_alive(revived) and not runtime.is_alive(inst)  # `runtime` reaps its child
    assert gone(inst.pid)
    assert restarted.exit_code(revived) is None and runtime.exit_code(inst) == 0
    assert "exit code unknown (not started by this daemon)" in Path(inst.log_path).read_text()


async def test_process_that_exits_on_its_own_is_reaped(runtime: TrackingRuntime, tmp: Path) -> None:
    inst = await runtime.start(launch(tmp, make_tree(tmp, {"x.py": "raise SystemExit(3)\n"}), [PY, "x.py"]))
    deadline = time.monotonic() + 5
    while runtime.is_alive(inst) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not runtime.is_alive(inst) and runtime.exit_code(inst) == 3
    assert read_proc_stat(inst.pid) is None or read_proc_stat(inst.pid).start_time != inst.start_time  # type: ignore[union-attr]


async def test_exit_at_start_fails_wait_healthy_with_log_tail(runtime: TrackingRuntime, tmp: Path) -> None:
    crash = "import sys\nprint('loading config')\nprint('boom: config/app.toml missing', file=sys.stderr)\nsys.exit(1)\n"
    inst = await runtime.start(launch(tmp, make_tree(tmp, {"crash.py": crash}), [PY, "crash.py"]))
    began = time.monotonic()
    ok, why = await healthy(runtime, inst, deadline=10)
    assert not ok and time.monotonic() - began < 5
    assert why.startswith("process exited (code 1) before becoming healthy; last log lines:")
    assert "boom: config/app.toml missing" in why and "loading config" in why


# -- command resolution, substitution, environment ---------------------------------------------


async def test_missing_commands_raise_runtime_failure(runtime: TrackingRuntime, tmp: Path) -> None:
    tree = make_tree(tmp, {"bin/not-executable": "#!/bin/sh\n"})
    with pytest.raises(RuntimeFailure) as bare:
        await runtime.start(launch(tmp, tree, ["shipyard-no-such-command", "x"]))
    assert (
        "'shipyard-no-such-command' not found on PATH" in bare.value.message
        and "/usr/bin" in bare.value.message
    )
    with pytest.raises(RuntimeFailure) as relative:
        await runtime.start(launch(tmp, tree, ["bin/app"]))
    assert "does not exist" in relative.value.message and str(tree / "bin" / "app") in relative.value.message
    with pytest.raises(RuntimeFailure, match="is not executable"):
        await runtime.start(launch(tmp, tree, ["bin/not-executable"]))
    with pytest.raises(RuntimeFailure, match="image tree"):
        await runtime.start(launch(tmp, tmp / "missing-tree", [PY]))
    assert runtime.started == []


ENV_DUMP = """
import json, os, sys
out = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}
with open(os.path.join(os.environ["SHIPYARD_DATA_DIR"], "dump.json"), "w") as f:
    json.dump(out, f)
"""


async def test_substitution_environment_and_relative_program(
    runtime: TrackingRuntime, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_TEST_DAEMON_SECRET", "do-not-leak")
    monkeypatch.setenv("TZ", "UTC")
    tree = make_tree(tmp, {"bin/dump": f"#!{PY}\n{ENV_DUMP}", "deps/mod.py": ""})
    (tree / "bin" / "dump").chmod(0o755)
    env = {"PYTHONPATH": "deps", "CACHE": "${SHIPYARD_DATA_DIR}/cache", "URL": "http://127.0.0.1:${PORT}/"}
    inst = await runtime.start(
        launch(tmp, tree, ["bin/dump", "--port", "${PORT}", "--data=${SHIPYARD_DATA_DIR}"], env)
    )
    dump = json.loads(await wait_for_file(Path(inst.data_dir) / "dump.json"))
    assert dump["argv"] == ["--port", str(inst.port), f"--data={inst.data_dir}"]
    assert dump["cwd"] == str(tree)
    e = dump["env"]
    assert e["PORT"] == str(inst.port) and e["SHIPYARD_DATA_DIR"] == inst.data_dir
    assert e["CACHE"] == f"{inst.data_dir}/cache" and e["URL"] == f"http://127.0.0.1:{inst.port}/"
    assert e["SHIPYARD_INSTANCE_ID"] == "shop-1" and e["SHIPYARD_SLOT"] == "blue"
    assert e["SHIPYARD_IMAGE_ID"] == "sha256-test" and e["PYTHONPATH"] == "deps"
    assert e["PYTHONDONTWRITEBYTECODE"] == "1" and e["PYTHONUNBUFFERED"] == "1"
    assert e["TZ"] == "UTC" and e["PATH"] == os.environ["PATH"]
    assert "SHIPYARD_TEST_DAEMON_SECRET" not in e
    allowed = {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        "PORT",
        "SHIPYARD_DATA_DIR",
        "SHIPYARD_INSTANCE_ID",
        "SHIPYARD_SLOT",
        "SHIPYARD_IMAGE_ID",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PYTHONPATH",
        "CACHE",
        "URL",
        "LC_CTYPE",
    }  # LC_CTYPE: Python's own locale coercion may add it
    assert set(e) <= allowed


async def test_bare_program_found_on_relative_path_entry_inside_the_tree(
    runtime: TrackingRuntime, tmp: Path
) -> None:
    tree = make_tree(tmp, {"tools/dumpenv": f"#!{PY}\n{ENV_DUMP}"})
    (tree / "tools" / "dumpenv").chmod(0o755)
    inst = await runtime.start(launch(tmp, tree, ["dumpenv"], {"PATH": f"tools:{os.environ['PATH']}"}))
    dump = json.loads(await wait_for_file(Path(inst.data_dir) / "dump.json"))
    assert dump["env"]["SHIPYARD_INSTANCE_ID"] == "shop-1"


# -- helpers ---------------------------------------------------------------


def test_log_tail(tmp: Path) -> None:
    log = tmp / "log"
    assert log_tail(log) == ""
    log.write_text("".join(f"line {i} {'x' * 50}\n" for i in range(5000)))
    tail = log_tail(log, 3).splitlines()
    assert tail == [f"line {i} {'x' * 50}" for i in (4997, 4998, 4999)]
    log.write_text("only\nfour\nshort\nlines")
    assert log_tail(log, 20) == "only\nfour\nshort\nlines"
    assert log_tail(log, 2) == "short\nlines"
