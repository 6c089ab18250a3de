"""Fixtures for end-to-end tests: a real daemon on a private state dir, the example
shop's specs pointed at a free port, and cleanup of every process they start."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import example_dir, free_port
from support import SpecMaker
from support.procs import kill_everything_under

EXAMPLE = example_dir()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sy"))
    try:
        yield d
    finally:
        kill_everything_under(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(state_dir: Path) -> Iterator[DaemonProcess]:
    dp = DaemonProcess(state_dir).start()
    try:
        yield dp
    finally:
        if dp.proc is not None and dp.proc.poll() is not None:
            # it died during the test: its last words are gone with the state dir unless shown here
            print(f"the daemon exited during the test with code {dp.proc.returncode}; daemon.out ends:\n"
                  f"{dp.tail(80)}")
        dp.stop()


@pytest.fixture
async def api(daemon: DaemonProcess) -> AsyncIterator[AsyncApiClient]:
    client = AsyncApiClient(daemon.paths, timeout=120)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def listen() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def make_spec(state_dir: Path, listen: str) -> SpecMaker:
    """make_spec("v2", name="v2-manual", **{"strategy.blue_green.auto_promote": False})"""
    def make(version: str, name: str | None = None, **changes: Any) -> Path:
        source = EXAMPLE / f"{version}.yaml"
        doc: dict[str, Any] = yaml.safe_load(source.read_text())
        doc["listen"] = listen
        doc["build"]["context"] = str((source.parent / doc["build"]["context"]).resolve())
        if doc.get("database", {}).get("migrations"):
            doc["database"]["migrations"] = str((source.parent / doc["database"]["migrations"]).resolve())
        doc["health"]["interval"] = "100ms"
        for dotted, value in changes.items():
            node = doc
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            if value is None:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        path = state_dir / "specs" / f"{name or version.replace('/', '-')}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
    return make
