"""Enforcement: what keeps an instance from writing into its own image tree.

Instances run as root here, so the tree's 0444/0555 bits stop nothing. The mechanism is probed
once per process, in order of strength: Landlock (the kernel refuses writes outside an allow-list
of places), bubblewrap (the tree bind-mounted read-only in a private mount namespace, every
capability dropped), else verify-only (nothing is prevented; drift detection still finds writes).
Each probe really confines a child and checks that a write is refused: a kernel that only claims
support does not count. SHIPYARD_ENFORCEMENT=auto|landlock|bubblewrap|verify-only forces a mode; a
forced mode that does not work here is an error at start-up, never a silent downgrade."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from shipyard.errors import RuntimeFailure
from shipyard.runtime import landlock

AUTO = "auto"
LANDLOCK = "landlock"
BUBBLEWRAP = "bubblewrap"
VERIFY_ONLY = "verify-only"
MODES = (LANDLOCK, BUBBLEWRAP, VERIFY_ONLY)
ENV_VAR = "SHIPYARD_ENFORCEMENT"

PROBE_TIMEOUT_SECONDS = 10.0
BWRAP_INFO_TIMEOUT_SECONDS = 10.0
# Character devices any program may write; raw disks and the like stay out of reach.
DEV_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
LANDLOCK_WRAPPER = Path(landlock.__file__).resolve()

# Run inside the confinement by the probes: tries to create each path, prints one errno per path.
_WRITE_CHECK = """import json, sys
result = []
for path in sys.argv[1:]:
    try:
        open(path, "w").close()
        result.append(0)
    except OSError as exc:
        result.append(exc.errno)
print(json.dumps(result))
"""


class EnforcementUnavailable(RuntimeFailure):
    """The enforcement mode asked for does not work on this machine."""


@dataclass(frozen=True)
class Enforcement:
    """The active mode and, in one line, why (shown by `status` and the checklist)."""

    mode: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "reason": self.reason}


@dataclass(frozen=True)
class ProbeResult:
    works: bool
    reason: str


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def _run_write_check(argv: list[str], paths: list[Path]) -> list[int] | str:
    """Errnos of the write attempts made by `argv + [_WRITE_CHECK] + paths`, or why it failed."""
    try:
        done = subprocess.run(
            [*argv, sys.executable, "-I", "-S", "-c", _WRITE_CHECK, *map(str, paths)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return f"probe timed out after {PROBE_TIMEOUT_SECONDS:g}s"
    except OSError as exc:
        return f"probe could not run ({exc.strerror or exc})"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        err = done.stderr.decode(errors="replace").strip().splitlines()
        return f"probe failed (exit code {done.returncode}: {err[-1] if err else 'no output'})"
    return [int(x) for x in result]


def probe_landlock() -> ProbeResult:
    try:
        abi = landlock.abi_version()
    except OSError as exc:
        return ProbeResult(False, f"landlock unavailable ({_errno_name(exc.errno)})")
    with tempfile.TemporaryDirectory(prefix="shipyard-probe-") as tmp:
        granted = Path(tmp, "granted")
        granted.mkdir()
        got = _run_write_check(landlock_argv([str(granted)], []), [Path(tmp, "denied"), granted / "ok"])
    if isinstance(got, str):
        return ProbeResult(False, f"landlock ABI {abi}: {got}")
    if got != [errno.EACCES, 0]:
        return ProbeResult(False, f"landlock ABI {abi} did not confine a test process "
                                  f"(write outside: {_errno_name(got[0])}, inside: {_errno_name(got[1])})")
    return ProbeResult(True, f"landlock ABI {abi}")


def probe_bubblewrap() -> ProbeResult:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return ProbeResult(False, "bwrap not installed")
    try:
        version = subprocess.run([bwrap, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=PROBE_TIMEOUT_SECONDS).stdout.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ProbeResult(False, f"bwrap does not run ({exc})")
    version = version or "bubblewrap (unknown version)"
    with tempfile.TemporaryDirectory(prefix="shipyard-probe-") as tmp:
        tree = Path(tmp, "tree")
        tree.mkdir()
        got = _run_write_check(bubblewrap_argv(bwrap, tree), [tree / "x", Path(tmp, "ok")])
    if isinstance(got, str):
        return ProbeResult(False, f"{version}: {got}")
    if got != [errno.EROFS, 0]:
        return ProbeResult(False, f"{version} did not protect a test tree "
                                  f"(write inside: {_errno_name(got[0])}, outside: {_errno_name(got[1])})")
    return ProbeResult(True, version)


PROBES: dict[str, Callable[[], ProbeResult]] = {LANDLOCK: cache(probe_landlock),
                                                BUBBLEWRAP: cache(probe_bubblewrap)}


def choose_enforcement(requested: str | None = None,
                       probes: Mapping[str, Callable[[], ProbeResult]] = PROBES) -> Enforcement:
    """The mode `requested` (default: $SHIPYARD_ENFORCEMENT, else auto) if it works here;
    auto takes the strongest one that works."""
    wanted = (requested or os.environ.get(ENV_VAR) or AUTO).strip().lower()
    source = f"{ENV_VAR}={wanted}" if not requested else "asked for explicitly"
    if wanted == VERIFY_ONLY:
        return Enforcement(VERIFY_ONLY, f"verify-only: {source}")
    if wanted in probes:
        result = probes[wanted]()
        if result.works:
            return Enforcement(wanted, result.reason)
        raise EnforcementUnavailable(
            f"enforcement mode {wanted} ({source}) does not work on this machine: {result.reason}",
            hint=f"unset {ENV_VAR} (auto picks what works here) or set it to verify-only",
        )
    if wanted != AUTO:
        raise EnforcementUnavailable(
            f"unknown enforcement mode {wanted!r} ({source})",
            hint=f"set {ENV_VAR} to one of auto, {', '.join(MODES)}",
        )
    failures = []
    for mode in (LANDLOCK, BUBBLEWRAP):
        result = probes[mode]()
        if result.works:
            return Enforcement(mode, result.reason)
        failures.append(result.reason)
    return Enforcement(VERIFY_ONLY, "verify-only: " + ", ".join(failures))


def enforcement_mode() -> Enforcement:
    """The mode instances of this process run under (probes run once, then are remembered)."""
    return choose_enforcement()


# ---- launching under a mode -----------------------------------------------------------------

def landlock_argv(writable_dirs: list[str], writable_files: list[str]) -> list[str]:
    """The wrapper's argv prefix; the service's argv follows."""
    grants = [arg for d in writable_dirs for arg in ("--writable", d)]
    grants += [arg for f in writable_files for arg in ("--writable-file", f)]
    return [sys.executable, "-I", "-S", str(LANDLOCK_WRAPPER), *grants, "--"]


def bubblewrap_argv(bwrap: str, tree: Path, info_fd: int | None = None) -> list[str]:
    """Everything as it is, but the tree read-only. --new-session makes the service the leader of
    its own process group (its pid = the group id the runtime signals); no --die-with-parent, so
    instances outlive the daemon. --chdir goes through the read-only mount: the inherited cwd
    would still point at the writable one."""
    real = os.path.realpath(tree)
    info = ["--info-fd", str(info_fd)] if info_fd is not None else []
    return [bwrap, "--dev-bind", "/", "/", "--ro-bind", real, real, "--cap-drop", "ALL",
            "--new-session", "--chdir", real, *info, "--"]


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def landlock_grants(tree: Path, data_dir: Path, log_path: Path,
                    env: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(writable dirs, writable files, notes for the instance log). Landlock can only allow, and
    an allowed directory is writable all the way down, so a place that contains the tree (a state
    dir under /tmp) is left out rather than opening the tree."""
    wanted = [data_dir, Path("/tmp"), Path("/dev/shm")]
    tmpdir = env.get("TMPDIR", "")
    if os.path.isabs(tmpdir):
        wanted.append(Path(tmpdir))
    real_tree = Path(os.path.realpath(tree))
    dirs: list[str] = []
    notes: list[str] = []
    for place in wanted:
        real = os.path.realpath(place)
        if real in dirs:
            continue
        if _overlaps(Path(real), real_tree):
            notes.append(f"{place} is not writable for this instance: it overlaps the image tree {tree} "
                         "(keep the state dir out of it)")
            continue
        dirs.append(real)
    # The instance's own /proc/<pid> (resolved by the wrapper, whose pid the service keeps).
    dirs.append("/proc/self")
    # The log: so that reopening /dev/stdout (a link to it) works, as it does unconfined.
    return dirs, [str(log_path), *DEV_FILES], notes


@dataclass
class Confined:
    """One instance's launch under the active mode: argv to spawn, then the pid that serves."""

    argv: list[str]
    notes: list[str]
    pass_fds: tuple[int, ...] = ()
    info_fd: int | None = None            # bwrap: read end of --info-fd, which reports the child's pid
    _child_fds: list[int] = field(default_factory=list)

    def __enter__(self) -> Confined:
        return self

    def __exit__(self, *exc: object) -> None:
        self.spawned()
        if self.info_fd is not None:
            os.close(self.info_fd)
            self.info_fd = None

    def spawned(self) -> None:
        """Close the child's ends in the parent, so EOF on the info pipe means the launcher is gone."""
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds.clear()

    async def service_pid(self, proc: subprocess.Popen[bytes]) -> int:
        """The pid of the process that serves: the spawned one, except under bwrap, which forks."""
        if self.info_fd is None:
            return proc.pid
        info = await _read_json_object(self.info_fd, BWRAP_INFO_TIMEOUT_SECONDS)
        if isinstance(info, dict) and isinstance(info.get("child-pid"), int):
            return int(info["child-pid"])
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = proc.wait()
        raise RuntimeFailure(
            f"bubblewrap did not start the service (exit code {code})",
            hint="its error is at the end of the instance log; check `bwrap --version` runs here",
        )


async def _read_json_object(fd: int, timeout: float) -> Any:
    """The first complete JSON document written to pipe `fd`; None at EOF or timeout."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = b""
    deadline = loop.time() + timeout
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(fd, readable.set_result, None)
            try:
                await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            return None
        buf += chunk
        with contextlib.suppress(ValueError):
            return json.loads(buf)


class Sandbox:
    """Launches instances under one enforcement mode (the base class enforces nothing)."""

    def __init__(self, enforcement: Enforcement) -> None:
        self.enforcement = enforcement

    def confine(self, argv: list[str], *, tree: Path, data_dir: Path, log_path: Path,
                env: Mapping[str, str]) -> Confined:
        return Confined(argv=list(argv), notes=[f"enforcement: {self.enforcement.reason}"])

    def exit_code(self, returncode: int) -> int:
        """The service's exit status from its launcher's (negative: killed by that signal)."""
        return returncode


class LandlockSandbox(Sandbox):
    def confine(self, argv: list[str], *, tree: Path, data_dir: Path, log_path: Path,
                env: Mapping[str, str]) -> Confined:
        dirs, files, notes = landlock_grants(tree, data_dir, log_path, env)
        return Confined(argv=[*landlock_argv(dirs, files), *argv],
                        notes=[f"enforcement: {self.enforcement.reason}", *notes])


class BubblewrapSandbox(Sandbox):
    def __init__(self, enforcement: Enforcement) -> None:
        super().__init__(enforcement)
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise EnforcementUnavailable("bwrap is no longer installed",
                                         hint="install bubblewrap again or restart the daemon")
        self.bwrap = bwrap
        self.env_program = shutil.which("env") or "/usr/bin/env"

    def confine(self, argv: list[str], *, tree: Path, data_dir: Path, log_path: Path,
                env: Mapping[str, str]) -> Confined:
        read_end, write_end = os.pipe()
        return Confined(argv=[*bubblewrap_argv(self.bwrap, tree, write_end), *self._restore_pwd(argv, env), *argv],
                        notes=[f"enforcement: {self.enforcement.reason}"], pass_fds=(write_end,),
                        info_fd=read_end, _child_fds=[write_end])

    def _restore_pwd(self, argv: list[str], env: Mapping[str, str]) -> list[str]:
        """bwrap always sets PWD; env(1) puts it back as the spec had it before exec'ing the service
        (same pid), so the service's environment is exactly its image's. A program name with '='
        would be read by env as an assignment: then PWD is left as bwrap set it."""
        if "=" in argv[0]:
            return []
        return [self.env_program, f"PWD={env['PWD']}"] if "PWD" in env else [self.env_program, "-u", "PWD"]

    def exit_code(self, returncode: int) -> int:
        return bwrap_exit_code(returncode)


def bwrap_exit_code(returncode: int) -> int:
    """bwrap reports a child killed by signal N as exit code 128 + N, like a shell does."""
    return -(returncode - 128) if 128 < returncode <= 128 + 64 else returncode


def sandbox_for(enforcement: Enforcement) -> Sandbox:
    kinds: dict[str, type[Sandbox]] = {LANDLOCK: LandlockSandbox, BUBBLEWRAP: BubblewrapSandbox}
    return kinds.get(enforcement.mode, Sandbox)(enforcement)
