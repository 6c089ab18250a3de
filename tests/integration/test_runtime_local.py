"""LocalRuntime against real processes: what only the local adapter does (command resolution
messages, environment, relative program paths, log tails). What every Runtime adapter must
do (start, health, stop, re-adoption, pid safety) is in test_runtime_port.py, run on both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.errors import RuntimeFailure
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.local import LocalRuntime, log_tail, read_proc_stat

pytestmark = pytest.mark.timeout(30)

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


async def wait_for_file(path: Path, seconds: float = 5) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


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
