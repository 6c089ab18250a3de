"""The remote helper as a host runs it: the real zipapp under the system python3 (-I: no venv,
no shipyard installed), as a subprocess in a temp root, spoken to by HelperClient. Only the
SSH channel is missing: the client sees the subprocess's pipes instead."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.drift.processes import ExpectedProcess, LiveProcess, compare
from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient, HelperError, HelperGone, spawn_local
from shipyard.images.manifest import canonical_json, diff_tree, image_id_of, make_manifest
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


async def test_hello_reports_versions_and_host_facts(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    hello = await client.hello()
    sha, _ = bundle.build()
    assert hello["protocol"] == 1 and hello["bundle_sha256"] == sha
    assert hello["python"].startswith("3.")
    facts = hello["host"]
    assert facts["cpu_count"] == os.cpu_count() and len(facts["load"]) == 3
    assert 0 < facts["disk"]["free"] <= facts["disk"]["total"]
    assert facts["memory"]["total"] > 0 and facts["boot_id"]


async def test_objects_travel_once_and_a_corrupted_put_is_refused(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    good, bad = b"x" * 3_000_000, b"the real content\n"
    good_sha, bad_sha = hashlib.sha256(good).hexdigest(), hashlib.sha256(bad).hexdigest()
    assert await client.missing([good_sha, bad_sha, good_sha]) == [good_sha, bad_sha]
    assert await client.put(good_sha, good) is True
    assert await client.put(good_sha, good) is False          # already there: nothing rewritten
    with pytest.raises(HelperError) as err:
        await client.put(bad_sha, b"tampered on the way\n")
    assert err.value.code == "hash_mismatch" and bad_sha[:12] in err.value.message
    objects = root / "state" / "images" / "objects"
    assert await client.missing([good_sha, bad_sha]) == [bad_sha]
    assert leftovers(objects) == []
    stored = objects / good_sha[:2] / good_sha[2:]
    assert stored.read_bytes() == good and stat.S_IMODE(stored.stat().st_mode) == 0o444
    assert (await client.hello())["protocol"] == 1               # still in step after the refusal


async def test_tree_materialised_read_only_verified_and_tamper_reported(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    image_id, data, manifest = make_image(root, {"app/main.py": b"print('v1')\n", "static/a.css": b"a{}\n"}, store)
    client, _ = await spawn()
    with pytest.raises(HelperError) as err:
        await client.materialize(image_id, data)
    assert err.value.code == "missing_objects" and len(err.value.details["objects"]) == 3
    assert await ship(client, store, manifest) == 3
    with pytest.raises(HelperError) as err:
        await client.materialize("0" * 64, data)                 # a manifest must hash to its id
    assert err.value.code == "bad_request"
    result = await client.materialize(image_id, data)
    tree = Path(result["tree"])
    assert result["created"] and tree == root / "state" / "images" / "trees" / image_id
    assert diff_tree(tree, manifest, image_id).ok              # the same tree a local store writes
    assert stat.S_IMODE((tree / "app" / "main.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((tree / "run.sh").stat().st_mode) == 0o555
    assert (await client.materialize(image_id, data))["created"] is False
    for mode in ("metadata", "full"):
        assert (await client.verify(image_id, mode)).clean

    target = tree / "app" / "main.py"
    os.chmod(tree / "app", 0o755)
    os.chmod(target, 0o644)
    target.write_bytes(b"print('v2')\n")                        # same size, other content
    for mode in ("metadata", "full"):
        res = await client.verify(image_id, mode)
        assert not res.clean
        assert set(res.content) == {"app/main.py"}
        assert res.content["app/main.py"]["actual_sha256"] != res.content["app/main.py"]["expected_sha256"]
        assert set(res.modes) == {"app", "app/main.py"}
    moved = await client.quarantine(image_id)
    assert moved is not None and not tree.exists() and Path(moved).is_dir()
    assert (await client.verify(image_id)).tree_missing
    assert (await client.materialize(image_id, data))["created"] is True
    assert (await client.verify(image_id, "full")).clean
    await client.remove_tree(image_id)
    assert not tree.exists()


async def test_a_corrupted_object_in_the_host_store_is_dropped_and_asked_for_again(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    image_id, data, manifest = make_image(root, {"a.txt": b"alpha\n"}, store)
    client, _ = await spawn()
    await ship(client, store, manifest)
    sha = next(e["sha256"] for e in manifest["files"] if e["path"] == "a.txt")
    obj = root / "state" / "images" / "objects" / sha[:2] / sha[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"omega\n")
    with pytest.raises(HelperError) as err:
        await client.materialize(image_id, data)
    assert err.value.code == "corrupted" and err.value.details["objects"] == [sha]
    assert not (root / "state" / "images" / "trees" / image_id).exists()
    assert await client.missing([sha]) == [sha]


async def test_an_instance_runs_from_its_read_only_tree(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    image_id, data, manifest = make_image(root, {"app/main.py": b"print('v1')\n"}, store)
    client, _ = await spawn()
    await ship(client, store, manifest)
    tree = (await client.materialize(image_id, data))["tree"]
    started = await client.start("web-1", manifest["command"], {"PATH": "/usr/bin:/bin"}, tree)
    assert os.readlink(f"/proc/{started.pid}/cwd") == tree
    [state] = await client.status([(started.pid, started.start_time)])
    assert state.state == "running"
    assert (await client.stop(started.pid, started.start_time, timeout=5)).exit_code == -signal.SIGTERM
    assert (await client.verify(image_id, "full")).clean       # running it wrote nothing into the tree


def _alive(pid: int, start_time: int) -> bool:
    st = read_proc_stat(pid)
    return st is not None and st.start_time == start_time and not st.dead


async def test_an_instance_outlives_its_helper_and_is_stopped_by_pid_and_start_time(spawn: Any, root: Path) -> None:
    client, helper = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    code = "import os, sys, time; print('up', os.environ['GREETING'], os.getcwd(), flush=True); time.sleep(120)"
    started = await client.start("web-1", [PYTHON, "-c", code], {"GREETING": "hi"}, str(cwd))
    pid, st = started.pid, started.start_time
    assert _alive(pid, st)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid       # its own session and group
    assert os.getsid(pid) != os.getsid(helper.pid)

    helper.kill()                                                 # the SSH connection drops
    await helper.wait()
    await client.aclose()
    time.sleep(0.2)
    assert _alive(pid, st)

    client, _ = await spawn()
    [state] = await client.status([(pid, st)])
    assert state.state == "running" and state.exit_code is None
    [other] = await client.status([(pid, st + 1)])               # a recycled pid is not ours
    assert other.state == "gone"
    assert (await client.stop(pid, st + 1, timeout=1)).how == "not running"
    assert _alive(pid, st)

    deadline = time.monotonic() + 10
    while b"up hi" not in (chunk := await client.logs("web-1", tail=4096)).data and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert f"up hi {cwd}".encode() in chunk.data

    stopped = await client.stop(pid, st, timeout=5)
    assert stopped.how == "SIGTERM" and stopped.state == "exited" and stopped.exit_code == -signal.SIGTERM
    assert not _alive(pid, st)
    [state] = await client.status([(pid, st)])
    assert state.state == "exited" and state.exit_code == -signal.SIGTERM


async def test_exit_code_of_an_instance_that_exits_by_itself(spawn: Any, root: Path) -> None:
    client, helper = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    started = await client.start("job-1", [PYTHON, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"], {},
                                 str(cwd))
    helper.kill()                                # the exit is recorded with no helper running
    await helper.wait()
    await client.aclose()
    client, _ = await spawn()
    deadline = time.monotonic() + 10
    while (state := (await client.status([(started.pid, started.start_time)]))[0]).state != "exited":
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    assert state.exit_code == 3
    log = (await client.logs("job-1", offset=0)).data.decode()
    assert "exited with code 3" in log


async def test_stop_escalates_to_sigkill_for_the_whole_group(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); print('ready', flush=True); "
            "time.sleep(120)")
    started = await client.start("stubborn", [PYTHON, "-c", code], {}, str(cwd))
    deadline = time.monotonic() + 10
    while b"ready" not in (await client.logs("stubborn", tail=100)).data:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    stopped = await client.stop(started.pid, started.start_time, timeout=0.3)
    assert stopped.how.startswith("SIGKILL") and stopped.exit_code == -signal.SIGKILL
    members = [int(p) for p in os.listdir("/proc") if p.isdigit()
               and (s := read_proc_stat(int(p))) is not None and s.pgrp == started.pid and not s.dead]
    assert members == []


async def test_logs_from_an_offset_and_a_tail(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    lines = "".join(f"line {i}\n" for i in range(1000))
    started = await client.start("chatty", [PYTHON, "-c", f"import sys; sys.stdout.write({lines!r})"], {}, str(cwd))
    deadline = time.monotonic() + 10
    while (await client.status([(started.pid, started.start_time)]))[0].state != "exited":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    whole = b""
    offset = 0
    while True:
        chunk = await client.logs("chatty", offset=offset, limit=1000)
        if not chunk.data:
            break
        whole += chunk.data
        offset = chunk.next_offset
    assert lines.encode() in whole and offset == chunk.file_size
    tail = await client.logs("chatty", tail=200)
    assert tail.offset == tail.file_size - 200 and tail.data == whole[-200:]
    with pytest.raises(HelperError) as err:
        await client.logs("chatty", offset=0, tail=1)
    assert err.value.code == "bad_request"
    with pytest.raises(HelperError) as err:
        await client.logs("nobody", tail=1)
    assert err.value.code == "not_found"


async def test_start_failures_are_clear_replies(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    with pytest.raises(HelperError) as err:
        await client.start("web-1", ["/no/such/program"], {}, str(root))
    assert err.value.code == "start_failed" and "/no/such/program" in err.value.message
    with pytest.raises(HelperError) as err:
        await client.start("web-1", ["true"], {}, str(root / "nowhere"))
    assert err.value.code == "not_found"
    with pytest.raises(HelperError) as err:
        await client.start("../escape", ["true"], {}, str(root))
    assert err.value.code == "bad_request"


async def test_listeners_name_the_owning_pid(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('listening', flush=True); time.sleep(120)")
    started = await client.start("listener", [PYTHON, "-c", code], {}, str(root))
    deadline = time.monotonic() + 10
    while b"listening" not in (await client.logs("listener", tail=100)).data:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    found = await client.listeners([port])
    assert found["listeners"] == [{"address": "127.0.0.1", "port": port, "pids": [started.pid]}]
    await client.stop(started.pid, started.start_time, timeout=2)
    assert (await client.listeners([port]))["listeners"] == []


async def test_inspect_gives_argv_and_env_for_drift_but_never_a_secret_value(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    argv = [PYTHON, "-c", "import time; time.sleep(120)"]
    env = {"PATH": "/usr/bin:/bin", "APP_MODE": "blue", "DB_PASSWORD": "hunter2"}
    started = await client.start("web-1", argv, env, str(root))
    seen = await client.inspect(started.pid, started.start_time, ["PATH", "APP_MODE"])
    assert seen["state"] == "running" and seen["argv"] == argv
    assert seen["env"] == {"PATH": "/usr/bin:/bin", "APP_MODE": "blue", "DB_PASSWORD": "<withheld>"}
    live = LiveProcess(seen["argv"], seen["env"])
    assert compare(ExpectedProcess(argv, env, frozenset({"DB_PASSWORD"})), live) == {}
    drifted = compare(ExpectedProcess(argv, {**env, "APP_MODE": "green"}, frozenset({"DB_PASSWORD"})), live)
    assert drifted == {"env_changed": {"APP_MODE": {"expected": "green", "actual": "blue"}}}
    assert (await client.inspect(started.pid, started.start_time + 1, []))["state"] == "recycled"
    await client.stop(started.pid, started.start_time, timeout=2)
    assert (await client.inspect(started.pid, started.start_time, []))["state"] == "gone"


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


async def test_a_full_disk_fails_clearly_and_leaves_nothing_half_written(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    big = os.urandom(300 * 1024)
    image_id, data, manifest = make_image(root, {"big.bin": big}, store)
    sha = hashlib.sha256(big).hexdigest()

    client, _ = await spawn(_limit_file_size)        # any file past 64 KiB fails: EFBIG
    with pytest.raises(HelperError) as err:
        await client.put(sha, big)
    assert err.value.disk_full and "disk is full" in err.value.message and err.value.hint
    objects = root / "state" / "images" / "objects"
    assert await client.missing([sha]) == [sha] and leftovers(objects) == []
    assert (await client.hello())["protocol"] == 1

    roomy, _ = await spawn()
    await ship(roomy, store, manifest)
    with pytest.raises(HelperError) as err:          # the tree cannot be written either
        await client.materialize(image_id, data)
    assert err.value.disk_full
    trees = root / "state" / "images" / "trees"
    assert not trees.exists() or list(trees.iterdir()) == []
    assert (await roomy.materialize(image_id, data))["created"]


async def test_a_helper_that_dies_fails_pending_calls(spawn: Any, root: Path) -> None:
    client, helper = await spawn()
    await client.hello()
    helper.kill()
    await helper.wait()
    with pytest.raises(HelperGone):
        await client.hello()
    with pytest.raises(HelperGone):
        await client.hello()


async def test_install_script_puts_the_bundle_under_home_verified(root: Path) -> None:
    sha, data = bundle.build()
    home = root / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}

    async def installed_already() -> bool:
        check = await asyncio.create_subprocess_exec(*bundle.check_argv(sha), env=env, cwd=home)
        return await check.wait() == 0

    assert not await installed_already()
    corrupted = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    for payload, ok in ((corrupted, False), (data, True)):
        proc = await asyncio.create_subprocess_exec(*bundle.install_argv(sha, PYTHON), env=env, cwd=home,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, errout = await proc.communicate(payload)
        assert (proc.returncode == 0) is ok, errout
    installed = home / bundle.remote_path(sha)
    assert await installed_already()
    assert installed.read_bytes() == data and out.decode().strip() == str(installed)
    assert leftovers(home) == []
    proc = await asyncio.create_subprocess_exec(*bundle.launch_argv(sha, str(root / "st"), PYTHON), env=env,
                                                cwd=home, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    client = HelperClient(proc.stdout, proc.stdin)   # type: ignore[arg-type]
    assert (await client.hello())["bundle_sha256"] == sha
    await client.aclose()
    assert await proc.wait() == 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        kill_everything_under(path)
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_really_full_file_system_fails_the_host_and_keeps_nothing_half_written(spawn: Any,
                                                                                       root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    small = os.urandom(600 * 1024)
    image_id, data, manifest = make_image(root, {"small.bin": small}, store)
    too_big = os.urandom(2 << 20)
    state = root / "state"
    with tmpfs(state, "1m"):
        client, _ = await spawn()
        free_before = os.statvfs(state).f_bfree
        with pytest.raises(HelperError) as err:
            await client.put(hashlib.sha256(too_big).hexdigest(), too_big)
        assert err.value.disk_full and "No space left" in err.value.message
        assert leftovers(state) == [] and os.statvfs(state).f_bfree >= free_before - 2   # dirs only

        await ship(client, store, manifest)                 # 600 KiB fits; a tree of it does not
        free_before = os.statvfs(state).f_bfree
        with pytest.raises(HelperError) as err:
            await client.materialize(image_id, data)
        assert err.value.disk_full
        assert list((state / "images" / "trees").iterdir()) == []
        assert os.statvfs(state).f_bfree >= free_before - 2
        assert (await client.verify(image_id)).tree_missing
        await client.aclose()


OLD_PYTHON = next((p for p in ("/root/.pyenv/versions/3.10.13/bin/python", "/usr/bin/python3.10",
                               "/usr/bin/python3.9") if os.access(p, os.X_OK)), None)


@pytest.mark.skipif(OLD_PYTHON is None, reason="no Python older than 3.11 on this machine")
async def test_a_host_python_too_old_gets_a_structured_refusal(root: Path) -> None:
    pyz = bundle.write(root / "helper")
    assert OLD_PYTHON is not None
    proc = await asyncio.create_subprocess_exec(OLD_PYTHON, "-I", str(pyz), "--root", str(root / "st"),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    client = HelperClient(proc.stdout, proc.stdin)   # type: ignore[arg-type]
    with pytest.raises(HelperGone, match="needs Python 3.11 or later") as err:
        await client.hello()
    assert err.value.hint == "install python3 >= 3.11 on the host"
    assert await proc.wait() == 3


async def test_instances_hold_none_of_the_channel_so_it_can_close(root: Path) -> None:
    """sshd ends a session only when every copy of its pipes is closed: an instance or supervisor
    that kept the helper's stdout or stderr would hold the SSH channel open forever."""
    pyz = bundle.write(root / "helper")
    client, proc = await spawn_local([PYTHON, "-I", str(pyz), "--root", str(root / "state")],
                                     start_new_session=True, stderr=asyncio.subprocess.PIPE)
    started = await client.start("web-1", [PYTHON, "-c", "import time; time.sleep(120)"], {}, str(root))
    await client.aclose()                     # the channel's stdin ends
    assert proc.stdout is not None and proc.stderr is not None
    assert await asyncio.wait_for(proc.stdout.read(), 5) == b""
    assert await asyncio.wait_for(proc.stderr.read(), 5) == b""
    assert await asyncio.wait_for(proc.wait(), 5) == 0
    assert _alive(started.pid, started.start_time)
