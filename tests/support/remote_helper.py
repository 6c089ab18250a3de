"""The remote helper as a host runs it, for tests: the real zipapp under the system python3
(-I: no venv, no shipyard installed) as a subprocess in a temp root, spoken to by
HelperClient. Only the SSH channel is missing: the client sees the subprocess's pipes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient, spawn_local
from shipyard.images.manifest import canonical_json, image_id_of, make_manifest
from shipyard.images.objects import ObjectStore
from shipyard.procfs import read_proc_stat
from support.procs import kill_everything_under

PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"


@pytest.fixture
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="syremote"))
    try:
        yield d
    finally:
        kill_everything_under(d)
        for sub, _dirs, _files in os.walk(d):
            with contextlib.suppress(OSError):
                os.chmod(sub, 0o755)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def spawn(root: Path) -> AsyncIterator[Any]:
    pyz = bundle.write(root / "helper")
    procs: list[asyncio.subprocess.Process] = []

    async def start(preexec: Callable[[], None] | None = None) -> tuple[HelperClient, asyncio.subprocess.Process]:
        client, proc = await spawn_local([PYTHON, "-I", str(pyz), "--root", str(root / "state")],
                                         start_new_session=True, preexec_fn=preexec)
        procs.append(proc)
        return client, proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def make_image(root: Path, files: dict[str, bytes], store: ObjectStore) -> tuple[str, bytes, dict[str, Any]]:
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "run.sh").write_bytes(b"#!/bin/sh\nexec sleep 60\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("run.sh", src / "start")
    manifest = make_manifest("web", ["./run.sh"], {}, store.ingest(src))
    data = canonical_json(manifest)
    return image_id_of(manifest), data, manifest


async def ship(client: HelperClient, store: ObjectStore, manifest: dict[str, Any]) -> int:
    shas = sorted({e["sha256"] for e in manifest["files"] if e["type"] == "file"})
    lacking = await client.missing(shas)
    for sha in lacking:
        assert await client.put(sha, store.path(sha))
    return len(lacking)


def leftovers(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if ".tmp" in p.name)


def alive(pid: int, start_time: int) -> bool:
    st = read_proc_stat(pid)
    return st is not None and st.start_time == start_time and not st.dead
