"""Enforcement against real processes: an instance started by LocalRuntime from a real image tree
tries to write into that tree and elsewhere at start-up, and reports what happened over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.images.build import BuildInput, remove_dir
from shipyard.images.store import ImageStore
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime import landlock
from shipyard.runtime.local import LocalRuntime, log_tail, read_proc_stat
from shipyard.runtime.sandbox import ENV_VAR, LANDLOCK_WRAPPER, enforcement_mode, probe_landlock
from support.procs import kill_everything_under

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
# Tries every kind of write at start, before serving: the results are what the confinement allowed.
PROBE_APP = r'''
import errno, json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

tree, data = os.getcwd(), os.environ["SHIPYARD_DATA_DIR"]
scratch = f"/tmp/shipyard-enforcement-{os.environ['SHIPYARD_INSTANCE_ID']}-{os.getpid()}"


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]


def write(path, mode="w"):
    with open(path, mode) as f:
        f.write("x\n")


def scratch_file():
    write(scratch)
    os.unlink(scratch)


results = {
    "tree_create": attempt(lambda: write(os.path.join(tree, "new.txt"))),
    "tree_append": attempt(lambda: write(os.path.join(tree, "payload.txt"), "a")),
    "tree_mkdir": attempt(lambda: os.mkdir(os.path.join(tree, "sub"))),
    "tree_rename": attempt(lambda: os.rename(os.path.join(tree, "payload.txt"), os.path.join(tree, "moved.txt"))),
    "tree_remove": attempt(lambda: os.unlink(os.path.join(tree, "payload.txt"))),
    "tree_via_proc_cwd": attempt(lambda: write("/proc/self/cwd/new2.txt")),
    "data_write": attempt(lambda: write(os.path.join(data, "state.txt"))),
    "tmp_write": attempt(scratch_file),
    "dev_null": attempt(lambda: write("/dev/null")),
    "stdout_reopen": attempt(lambda: write("/dev/stdout", "a")),
    "pid": os.getpid(),
    "env": dict(os.environ),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(results).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def landlock_here() -> bool:
    return probe_landlock().works


needs_landlock = pytest.mark.skipif(not landlock_here(), reason=f"Landlock does not work on this kernel: "
                                                                f"{probe_landlock().reason}")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bwrap not installed (Debian package bubblewrap): bubblewrap mode untested")


def make_base(under: str | None) -> Path:
    return Path(tempfile.mkdtemp(prefix="sy-enf-", dir=under)).resolve()


@pytest.fixture
def base() -> Iterator[Path]:
    """A state dir outside /tmp, as in production: Landlock can then grant /tmp to instances."""
    path = make_base("/var/tmp")
    try:
        yield path
    finally:
        kill_everything_under(path)
        remove_dir(path)


@pytest.fixture
def tmp_base() -> Iterator[Path]:
    path = make_base(None)
    try:
        yield path
    finally:
        kill_everything_under(path)
        remove_dir(path)


@pytest.fixture
def started() -> Iterator[list[Instance]]:
    instances: list[Instance] = []
    yield instances
    for inst in instances:
        stat = read_proc_stat(inst.pid)
        if stat is not None and stat.start_time == inst.start_time:
            try:
                os.killpg(inst.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


async def image_tree(base: Path) -> Path:
    """A real image: built into an ImageStore and materialised as its read-only tree."""
    source = base / "src"
    source.mkdir()
    (source / "app.py").write_text(PROBE_APP)
    (source / "payload.txt").write_text("pristine\n")
    store = ImageStore(base / "state" / "images")
    image = await store.build(BuildInput(service="probe", context=source, run_command=[PY, "app.py"]))
    return store.materialize(image.id)


async def start_probe(runtime: LocalRuntime, base: Path, started: list[Instance], name: str = "probe-1"
                      ) -> tuple[Instance, dict[str, Any], Path]:
    tree = await image_tree(base)
    launch = LaunchSpec(instance_id=name, service="probe", slot="blue", image_id="img", tree=tree,
                        command=[PY, "app.py"], env={}, instance_dir=base / "state" / "instances" / name)
    inst = await runtime.start(launch)
    started.append(inst)
    return inst, await fetch_results(runtime, inst), tree


async def fetch_results(runtime: LocalRuntime, inst: Instance) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(200):
            try:
                return (await client.get(f"http://127.0.0.1:{inst.port}/")).json()
            except httpx.TransportError:
                if not runtime.is_alive(inst):
                    break
                await asyncio.sleep(0.025)
    raise AssertionError(f"the probe service did not answer; its log:\n{log_tail(inst.log_path)}")


def tree_untouched(tree: Path) -> None:
    assert sorted(p.name for p in tree.iterdir()) == ["app.py", "payload.txt"]
    assert (tree / "payload.txt").read_text() == "pristine\n"


def test_the_probe_picks_the_strongest_mode_that_works_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    mode = LocalRuntime().enforcement
    assert mode == enforcement_mode()
    if landlock_here():
        assert mode.mode == "landlock" and mode.reason.startswith("landlock ABI ")
    else:
        assert mode.mode in ("bubblewrap", "verify-only")


@needs_landlock
async def test_landlock_instance_cannot_write_its_tree_but_can_write_data_tmp_and_devices(
    base: Path, started: list[Instance]
) -> None:
    runtime = LocalRuntime(enforcement="landlock")
    inst, got, tree = await start_probe(runtime, base, started)
    for attempt in ("tree_create", "tree_append", "tree_mkdir", "tree_rename", "tree_remove", "tree_via_proc_cwd"):
        assert got[attempt] == "EACCES", (attempt, got)
    for attempt in ("data_write", "tmp_write", "dev_null", "stdout_reopen"):
        assert got[attempt] == "ok", (attempt, got)
    tree_untouched(tree)
    assert (Path(inst.data_dir) / "state.txt").read_text() == "x\n"
    assert got["pid"] == inst.pid  # the wrapper exec'd: the recorded pid is the one serving
    log = Path(inst.log_path).read_text()
    assert "--- shipyard: enforcement: landlock ABI" in log and "reopened" not in log and "x\n" in log
    await runtime.stop(inst, timeout=5)
    assert not runtime.is_alive(inst) and runtime.exit_code(inst) == -signal.SIGTERM


@needs_landlock
async def test_landlock_keeps_a_tree_under_tmp_read_only_by_not_granting_tmp(
    tmp_base: Path, started: list[Instance]
) -> None:
    runtime = LocalRuntime(enforcement="landlock")
    inst, got, tree = await start_probe(runtime, tmp_base, started)
    assert got["tree_create"] == "EACCES" and got["tree_remove"] == "EACCES"
    assert got["tmp_write"] == "EACCES" and got["data_write"] == "ok"
    tree_untouched(tree)
    assert "--- shipyard: /tmp is not writable for this instance" in Path(inst.log_path).read_text()


@needs_landlock
async def test_a_daemon_restart_readopts_and_stops_a_confined_instance(base: Path, started: list[Instance]) -> None:
    first = LocalRuntime(enforcement="landlock")
    inst, _, _ = await start_probe(first, base, started)
    restarted = LocalRuntime(enforcement="landlock")
    assert restarted.is_alive(inst)
    await restarted.stop(inst, timeout=5)
    assert not restarted.is_alive(inst) and not first.is_alive(inst)
    assert "stopped probe-1" in Path(inst.log_path).read_text()


@needs_bwrap
async def test_bubblewrap_instance_gets_erofs_in_its_tree_and_is_the_recorded_process(
    base: Path, started: list[Instance]
) -> None:
    runtime = LocalRuntime(enforcement="bubblewrap")
    assert runtime.enforcement.mode == "bubblewrap" and runtime.enforcement.reason.startswith("bubblewrap ")
    inst, got, tree = await start_probe(runtime, base, started)
    # Capabilities are dropped, so the tree's 0444/0555 bits count again: which check the kernel makes
    # first decides between EACCES and EROFS; creating a file shows the read-only mount itself.
    assert got["tree_create"] == "EROFS", got
    for attempt in ("tree_append", "tree_mkdir", "tree_rename", "tree_remove", "tree_via_proc_cwd"):
        assert got[attempt] in ("EROFS", "EACCES"), (attempt, got)
    for attempt in ("data_write", "tmp_write", "dev_null", "stdout_reopen"):
        assert got[attempt] == "ok", (attempt, got)
    tree_untouched(tree)
    # bwrap forks: the instance's pid must be the serving child, leader of its own process group.
    assert got["pid"] == inst.pid and os.getpgid(inst.pid) == inst.pid
    assert "PWD" not in got["env"]  # bwrap sets it; the service must see its image's environment only
    assert Path(f"/proc/{inst.pid}/cmdline").read_bytes().split(b"\0")[:2] == [PY.encode(), b"app.py"]
    assert "--- shipyard: enforcement: bubblewrap" in Path(inst.log_path).read_text()

    restarted = LocalRuntime(enforcement="bubblewrap")  # re-adoption: not its child
    assert restarted.is_alive(inst)
    await runtime.stop(inst, timeout=5)
    assert not runtime.is_alive(inst) and runtime.exit_code(inst) == -signal.SIGTERM
    assert not restarted.is_alive(inst)


async def test_verify_only_enforces_nothing(base: Path, started: list[Instance]) -> None:
    runtime = LocalRuntime(enforcement="verify-only")
    assert runtime.enforcement.mode == "verify-only"
    inst, got, tree = await start_probe(runtime, base, started)
    assert got["tree_create"] == "ok" and (tree / "new.txt").exists() and got["data_write"] == "ok" and got["pid"] == inst.pid
    assert "--- shipyard: enforcement: verify-only: asked for explicitly" in Path(inst.log_path).read_text()


@needs_landlock
def test_wrapper_passes_the_environment_exactly_and_keeps_its_pid(tmp_base: Path) -> None:
    """No LC_CTYPE from Python's locale coercion: the service sees only what the daemon passed."""
    env = {"PATH": "/usr/bin:/bin", "ONLY": "this"}
    # /proc/self/environ: what execve passed (os.environ would show this Python's own coercion).
    script = ("import json, os; raw = open('/proc/self/environ').read(); "
              "print(json.dumps([os.getpid(), dict(i.split('=', 1) for i in raw.split(chr(0)) if i)]))")
    argv = [PY, "-I", "-S", str(LANDLOCK_WRAPPER), "--writable", str(tmp_base), "--", PY, "-I", "-S", "-c", script]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=10)
    pid, seen = json.loads(out)
    assert pid == proc.pid and seen == env


@needs_landlock
def test_wrapper_fails_closed_when_the_command_cannot_run(tmp_base: Path) -> None:
    argv = [PY, "-I", "-S", str(LANDLOCK_WRAPPER), "--", str(tmp_base / "missing")]
    done = subprocess.run(argv, capture_output=True, timeout=10)
    assert done.returncode == landlock.EXIT_NOT_FOUND
    assert b"shipyard-landlock: cannot run" in done.stderr


def test_forced_mode_unavailable_here_stops_the_daemon_at_start_up(tmp_base: Path) -> None:
    """bwrap is looked up on PATH: without it on PATH, forcing bubblewrap must fail loudly."""
    env = {**os.environ, "SHIPYARD_ENFORCEMENT": "bubblewrap", "PATH": str(tmp_base)}
    done = subprocess.run([PY, "-m", "shipyard", "serve", "--state-dir", str(tmp_base / "state")],
                          env=env, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "enforcement mode bubblewrap (SHIPYARD_ENFORCEMENT=bubblewrap) does not work on this machine: " \
           "bwrap not installed" in " ".join(err.split())
    assert not (tmp_base / "state" / "api").exists()

