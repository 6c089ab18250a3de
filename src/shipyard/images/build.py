"""Staging a build: copy the context, write the rendered files, run the steps.

Everything happens in a private staging directory that the store scans afterwards and
then deletes, so a failed or cancelled build leaves nothing behind and the user's source
directory is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.errors import ImageError
from shipyard.images.ignore import IgnoreRules
from shipyard.images.manifest import canonical_json, describe_tree, manifest_mode, symlink_escapes, walk_tree

LogFn = Callable[[str], None]

TAIL_LINES = 20
REPRODUCIBLE_ENV = {"SOURCE_DATE_EPOCH": "315532800", "PYTHONDONTWRITEBYTECODE": "1"}
"""Defaults for the steps (overridable): tools that honour them (pip's byte-compiling, zip,
most packagers) then produce the same bytes on every build, so the image id stays stable."""
READ_LIMIT = 1 << 16
STRAGGLER_GRACE = 5.0
EXIT_POLL = 0.1


@dataclass(frozen=True)
class BuildInput:
    """Everything an image is made from; the store turns it into an Image."""

    service: str
    context: Path
    ignore: list[str] = field(default_factory=list)
    steps: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    run_command: list[str] = field(default_factory=list)
    run_env: dict[str, str] = field(default_factory=dict)


def remove_dir(path: Path) -> None:
    """Delete a tree even when parts of it are read-only (image trees, steps' output)."""

    def make_writable_and_retry(func: Callable[[str], object], target: str, _exc: object) -> None:
        parent = os.path.dirname(target)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if not os.path.islink(target) and os.path.isdir(target):
            with contextlib.suppress(OSError):
                os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | stat.S_IRWXU)
        func(target)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | stat.S_IRWXU)
        shutil.rmtree(path, onerror=make_writable_and_retry)


def copy_context(context: Path, dest: Path, rules: IgnoreRules, exclude: Path | None = None) -> int:
    """Copy the non-ignored part of ``context`` into the empty directory ``dest``; return the
    number of files. Symlinks are copied as links, never followed, and must stay inside the
    context; ``exclude`` (e.g. the store itself, when it lives in the context) is skipped."""
    excluded = None
    if exclude is not None and exclude.is_relative_to(context):
        excluded = exclude.relative_to(context).as_posix()

    def skip(rel: str, is_dir: bool) -> bool:
        return rel == excluded or rules.ignored(rel, is_dir)

    count = 0
    try:
        for rel, st in walk_tree(context, skip):
            src, dst = context / rel, dest / rel
            if stat.S_ISDIR(st.st_mode):
                dst.mkdir()
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(src)
                if symlink_escapes(rel, target):
                    raise ImageError(
                        f"symlink {rel} -> {target} points outside the build context",
                        hint="an image must be self-contained: replace the link with the file, "
                        "or add it to build.ignore / .shipyardignore",
                    )
                os.symlink(target, dst)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(src, dst, follow_symlinks=False)
                os.chmod(dst, int(manifest_mode(st.st_mode), 8))
                count += 1
            else:
                raise ImageError(
                    f"{rel} in the build context is not a regular file, directory or symlink",
                    hint="add it to build.ignore or .shipyardignore",
                )
    except PermissionError as exc:
        raise ImageError(
            f"cannot read {exc.filename} in the build context: permission denied",
            hint="make it readable by the user running shipyard, or add it to build.ignore",
        ) from exc
    return count


def _safe_target(tree: Path, rel: str) -> Path:
    """Where a rendered file goes, refusing paths that leave the tree or go through a symlink."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ImageError(
            f"build file path {rel!r} is not a plain relative path",
            hint="use a path relative to the build context, like config/app.toml",
        )
    current = tree
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise ImageError(
                f"build file {rel}: {current.relative_to(tree)} is a symlink or a file in the context",
                hint="render the file somewhere else or remove the conflicting entry from the context",
            )
    return tree / rel


def write_files(tree: Path, files: dict[str, str]) -> None:
    """Write the spec's rendered files, replacing (never writing through) what the context had."""
    for rel, content in sorted(files.items()):
        target = _safe_target(tree, rel)
        if target.is_dir() and not target.is_symlink():
            raise ImageError(
                f"build file {rel} would replace a directory of the context",
                hint="choose a path that is not a directory",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.write_text(content, encoding="utf-8")
        os.chmod(target, 0o644)


def step_env(build_env: dict[str, str]) -> dict[str, str]:
    return {**REPRODUCIBLE_ENV, **os.environ, **build_env}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


async def _pump(stream: asyncio.StreamReader, tail: deque[str], log: LogFn | None) -> None:
    """Forward output line by line; our own splitting copes with lines of any length."""
    pending = b""

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        tail.append(line)
        if log is not None:
            log(line)

    while chunk := await stream.read(READ_LIMIT):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            emit(raw)
    if pending:
        emit(pending)


async def run_step(
    index: int, total: int, argv: list[str], cwd: Path, env: dict[str, str], log: LogFn | None
) -> None:
    """Run one step in its own process group; raise ImageError with the output's tail on failure.
    Whatever the step leaves running is killed when it exits or when the build is cancelled."""
    label = f"build step {index}/{total}"
    if not argv or not argv[0]:
        raise ImageError(f"{label} is empty", hint="each step is a non-empty argv list, like [make, build]")
    if log is not None:
        log(f"--- {label}: {shlex.join(argv)}")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ImageError(
            f"{label}: executable {argv[0]!r} not found",
            hint="install it, or use a full path (a relative path is resolved in the build context)",
        ) from exc
    except PermissionError as exc:
        raise ImageError(
            f"{label}: {argv[0]!r} is not executable", hint="chmod +x it or call it via its interpreter"
        ) from exc
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, tail, log))
    try:
        # Process.wait() only returns once the pipe is closed too, which a process left behind
        # by the step may never do: watch for either the end of output or the exit status.
        while not pump.done() and proc.returncode is None:
            await asyncio.wait({pump}, timeout=EXIT_POLL)
        if proc.returncode is None:
            await proc.wait()
        _kill_group(proc.pid)  # nothing a step started outlives it
        try:
            await asyncio.wait_for(asyncio.shield(pump), STRAGGLER_GRACE)
        except TimeoutError:
            pump.cancel()
        code = proc.returncode
        assert code is not None
    except BaseException:
        _kill_group(proc.pid)
        pump.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), STRAGGLER_GRACE)
        raise
    if code != 0:
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"failed with exit code {code}"
        output = "\n".join(tail) if tail else "(no output)"
        raise ImageError(
            f"{label} {how}: {shlex.join(argv)}\n--- last {len(tail)} lines of output ---\n{output}",
            hint="fix the step; it runs with the staging copy of the build context as working directory",
        )


async def prepare(inp: BuildInput, tree: Path, log: LogFn | None = None, exclude: Path | None = None) -> None:
    """Fill the empty directory ``tree`` with the build context and the rendered files."""
    context = Path(inp.context)
    if not context.is_dir():
        raise ImageError(
            f"build context {context} is not a directory",
            hint="check build.context in the spec; it is relative to the spec file",
        )
    context = context.resolve()
    rules = IgnoreRules.for_context(context, inp.ignore)
    count = await asyncio.to_thread(copy_context, context, tree, rules, exclude)
    if log is not None:
        log(f"--- copied {count} files from {context}")
    write_files(tree, inp.files)


def input_key(tree: Path, inp: BuildInput) -> str:
    """What a build's steps start from: the staged tree plus everything else that goes
    into the image. Equal keys mean the steps would run on identical inputs."""
    doc = {"cache": 1, "service": inp.service, "tree": describe_tree(tree), "steps": [list(a) for a in inp.steps],
           "env": dict(inp.env), "run_command": list(inp.run_command), "run_env": dict(inp.run_env)}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


async def run_steps(inp: BuildInput, tree: Path, log: LogFn | None = None) -> None:
    env = step_env(inp.env)
    for i, argv in enumerate(inp.steps, start=1):
        await run_step(i, len(inp.steps), list(argv), tree, env, log)
