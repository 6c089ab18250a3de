"""Image builds end to end: real build steps, real processes started from the tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.errors import ImageError, ImageVerificationError
from shipyard.images import BuildInput, ImageStore

pytestmark = pytest.mark.timeout(60)

APP = """\
import pathlib
import greetlib

def main() -> None:
    conf = pathlib.Path("config/app.toml").read_text().strip()
    print(greetlib.greet(conf))

if __name__ == "__main__":
    main()
"""

VENDOR_STEP = (
    "import pathlib; d = pathlib.Path('deps/greetlib'); d.mkdir(parents=True);"
    "(d / '__init__.py').write_text('def greet(c):\\n    return \"hello from \" + c\\n')"
)


def alive(pid: int) -> bool:
    """Running (a killed orphan may linger as a zombie until init reaps it: that counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test saw; whatever is still alive at the end is killed, pass or fail."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ctx(tmp: Path) -> Path:
    src = tmp / "shop"
    (src / "shop").mkdir(parents=True)
    (src / "shop" / "__init__.py").write_text("")
    (src / "shop" / "__main__.py").write_text(APP)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return src


def shop_input(ctx: Path, greeting: str = "v1", steps: list[list[str]] | None = None) -> BuildInput:
    return BuildInput(
        service="shop",
        context=ctx,
        ignore=[".git", "__pycache__", "*.pyc"],
        steps=[[sys.executable, "-c", VENDOR_STEP]] if steps is None else steps,
        env={"PYTHONPATH": "deps"},
        files={"config/app.toml": greeting},
        run_command=[sys.executable, "-m", "shop"],
        run_env={"LOG_LEVEL": "info"},
    )


def run_from_tree(tree: Path, env: dict[str, str], *, bytecode: bool = False) -> str:
    full = {"PATH": os.environ.get("PATH", ""), **env}
    if not bytecode:
        full["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "shop"], cwd=tree, env=full, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_build_then_run_the_service_from_its_verified_tree(tmp: Path, ctx: Path) -> None:
    store = ImageStore(tmp / "images")
    v1 = await store.build(shop_input(ctx))
    v2 = await store.build(shop_input(ctx, greeting="v2"))
    assert v1.id != v2.id
    assert [im.id for im in store.list("shop")] == [v2.id, v1.id]
    assert not [e for e in v1.manifest["files"] if e["path"].startswith(".git")]
    assert run_from_tree(store.verified_tree(v1.id), v1.env) == "hello from v1"
    assert run_from_tree(store.verified_tree(v2.id), v2.env) == "hello from v2"
    assert store.verify(v1.id).ok  # running it left the tree untouched


async def test_python_writing_bytecode_into_a_tree_is_noticed(tmp: Path, ctx: Path) -> None:
    store = ImageStore(tmp / "images")
    image = await store.build(shop_input(ctx))
    tree = store.verified_tree(image.id)
    assert run_from_tree(tree, image.env, bytecode=True) == "hello from v1"
    report = store.verify(image.id)
    if os.geteuid() == 0:  # root ignores the read-only modes: verify is what catches it
        assert "shop/__pycache__" in report.added
        assert any(p.endswith(".pyc") for p in report.added)
        with pytest.raises(ImageVerificationError, match="added"):
            store.verified_tree(image.id)
    else:  # anyone else cannot write into the tree at all
        assert report.ok


async def test_tree_cannot_be_edited_by_a_normal_user(tmp: Path, ctx: Path) -> None:
    store = ImageStore(tmp / "images")
    image = await store.build(shop_input(ctx))
    tree = store.verified_tree(image.id)
    target = tree / "shop" / "__main__.py"
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            target.open("a")
        with pytest.raises(PermissionError):
            (tree / "new.txt").write_text("x")
        return
    for d in (tmp, tmp / "images", tmp / "images" / "trees"):  # let the unprivileged user reach the tree
        os.chmod(d, 0o755)

    def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, user=65534, group=65534, input="x", capture_output=True, text=True, timeout=20, cwd="/"
        )

    read = as_nobody(["cat", str(target)])
    assert read.returncode == 0 and "greetlib" in read.stdout  # control: the file is reachable
    append = as_nobody(["tee", "-a", str(target)])
    assert append.returncode != 0 and "Permission denied" in append.stderr
    create = as_nobody(["touch", str(tree / "new.txt")])
    assert create.returncode != 0 and "Permission denied" in create.stderr
    assert not (tree / "new.txt").exists()
    assert store.verify(image.id).ok


async def test_build_is_reproducible_even_with_compiled_bytecode(tmp: Path, ctx: Path) -> None:
    store = ImageStore(tmp / "images")
    steps = [[sys.executable, "-c", VENDOR_STEP], [sys.executable, "-m", "compileall", "-q", "shop", "deps"]]
    first = await store.build(shop_input(ctx, steps=steps))
    pycs = [e["path"] for e in first.manifest["files"] if e["path"].endswith(".pyc")]
    assert pycs
    tree = store.verified_tree(first.id)
    for pyc in pycs:  # hash-based, not mtime-based, thanks to SOURCE_DATE_EPOCH in the step env
        flags = int.from_bytes((tree / pyc).read_bytes()[4:8], "little")
        assert flags & 1, pyc
    copy = tmp / "elsewhere" / "shop"
    shutil.copytree(ctx, copy)
    os.utime(copy / "shop" / "__main__.py", (time.time() + 3600, time.time() + 3600))
    assert (await store.build(shop_input(copy, steps=steps))).id == first.id


async def test_concurrent_identical_builds_make_one_image(tmp: Path, ctx: Path) -> None:
    store = ImageStore(tmp / "images")
    a, b = await asyncio.gather(store.build(shop_input(ctx)), store.build(shop_input(ctx)))
    assert a.id == b.id
    assert [im.id for im in store.list()] == [a.id]
    assert os.listdir(tmp / "images" / "staging") == []
    assert store.verify(store.materialize(a.id).name).ok


async def test_output_is_streamed_while_the_step_runs(tmp: Path, ctx: Path) -> None:
    """The step waits for a file that the log callback creates when it sees the first line:
    if output were only delivered at the end, the step would time out and fail."""
    step = (
        "import os, pathlib, sys, time\n"
        "print('cwd=' + os.getcwd(), flush=True)\n"
        "deadline = time.time() + 10\n"
        "while not pathlib.Path('go').exists():\n"
        "    if time.time() > deadline: sys.exit('never saw go')\n"
        "    time.sleep(0.02)\n"
        "print('released')\n"
    )
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("cwd="):
            Path(line[4:], "go").write_text("")

    store = ImageStore(tmp / "images")
    image = await store.build(shop_input(ctx, steps=[[sys.executable, "-c", step]]), log=log)
    assert "released" in lines
    assert "go" in [e["path"] for e in image.manifest["files"]]


async def test_processes_left_behind_by_a_step_are_killed(tmp: Path, ctx: Path, pids: list[int]) -> None:
    step = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
    )
    lines: list[str] = []
    store = ImageStore(tmp / "images")
    started = time.monotonic()
    await store.build(shop_input(ctx, steps=[[sys.executable, "-c", step]]), log=lines.append)
    child = int(next(line.split()[1] for line in lines if line.startswith("child ")))
    pids.append(child)
    assert time.monotonic() - started < 5  # the orphan held the pipe open, yet the build finished
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not alive(child)


async def test_cancelled_build_kills_the_step_and_leaves_nothing(
    tmp: Path, ctx: Path, pids: list[int]
) -> None:
    step = "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(60)\n"
    lines: list[str] = []
    store = ImageStore(tmp / "images")
    task = asyncio.create_task(
        store.build(shop_input(ctx, steps=[[sys.executable, "-c", step]]), log=lines.append)
    )
    deadline = time.monotonic() + 10
    while not any(line.startswith("pid ") for line in lines):
        assert time.monotonic() < deadline, lines
        await asyncio.sleep(0.02)
    pid = int(next(line.split()[1] for line in lines if line.startswith("pid ")))
    pids.append(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)
    assert os.listdir(tmp / "images" / "staging") == []
    assert store.list() == []


async def test_step_killed_by_a_signal_is_reported(tmp: Path, ctx: Path) -> None:
    step = "import os, signal\nprint('about to die', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"
    store = ImageStore(tmp / "images")
    with pytest.raises(ImageError, match=r"(?s)was killed by SIGKILL.*about to die"):
        await store.build(shop_input(ctx, steps=[[sys.executable, "-c", step]]))
    assert os.listdir(tmp / "images" / "staging") == []


async def test_unchanged_inputs_skip_the_steps(tmp: Path) -> None:
    """`deploy` builds only if needed: the steps run again only when an input changed."""
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text("print('hi')\n")
    runs = tmp / "runs.log"
    step = [sys.executable, "-c", f"open({str(runs)!r}, 'a').write('x'); open('out.txt', 'w').write('built')"]
    store = ImageStore(tmp / "store")
    inp = BuildInput(service="svc", context=ctx, ignore=[], steps=[step], env={}, files={},
                     run_command=["python3", "app.py"], run_env={})
    lines: list[str] = []
    first = await store.build(inp)
    again = await store.build(inp, log=lines.append)
    assert again.id == first.id and runs.read_text() == "x"
    assert any("without running the steps" in line for line in lines)
    (ctx / "app.py").write_text("print('changed')\n")
    changed = await store.build(inp)
    assert changed.id != first.id and runs.read_text() == "xx"
    forced = await store.build(inp, use_cache=False)
    assert forced.id == changed.id and runs.read_text() == "xxx"
    other_env = await store.build(BuildInput(**{**inp.__dict__, "run_env": {"A": "1"}}))
    assert other_env.id != changed.id and runs.read_text() == "xxxx"
