"""How an instance's command line and environment are made from its LaunchSpec, and how its
log is read back: shared by the local runtime (which starts it), drift detection (which
checks it still runs that way) and health checks (which quote the log), so none of them
reaches into another's private parts and the three cannot disagree."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from shipyard.errors import RuntimeFailure
from shipyard.rollout.records import LaunchSpec

# Taken from the daemon's environment; everything else an instance sees comes from its spec.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def substitute(value: str, variables: dict[str, str]) -> str:
    for name, replacement in variables.items():
        value = value.replace("${" + name + "}", replacement)
    return value


def instance_environment(launch: LaunchSpec, variables: dict[str, str],
                         base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small known environment: the daemon's own variables (and secrets) do not leak in.
    `base` stands for the daemon's BASE_ENV_KEYS when the instance runs elsewhere (a host
    over SSH, whose PATH is not the controller's)."""
    source = os.environ if base is None else base
    env = {k: source[k] for k in BASE_ENV_KEYS if k in source}
    env.setdefault("PATH", os.defpath)
    env.update({k: substitute(v, variables) for k, v in launch.env.items()})
    env.update(variables)
    env.update(
        SHIPYARD_INSTANCE_ID=launch.instance_id,
        SHIPYARD_SLOT=launch.slot,
        SHIPYARD_IMAGE_ID=launch.image_id,
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


REMOTE_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
"""What stands for the daemon's own PATH/LANG on a fleet host (run.env may set others)."""


def remote_command(launch: LaunchSpec, variables: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of an instance on a fleet host (``launch.tree`` is the host's
    path): a command with '/' is relative to the tree, a bare name is left to the host's
    PATH. SshRuntime starts with it, the fleet drift scan compares with it."""
    argv = [substitute(arg, variables) for arg in launch.command]
    if argv and "/" in argv[0] and not argv[0].startswith("/"):
        argv[0] = f"{launch.tree}/{argv[0]}"
    return argv, instance_environment(launch, variables, base=REMOTE_BASE_ENV)


def resolve_program(program: str, tree: Path, path_value: str) -> str:
    """Absolute path of command[0]: relative paths are inside the image, bare names on PATH."""
    if "/" in program:
        candidate = Path(program) if os.path.isabs(program) else tree / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        problem = "is not executable" if candidate.is_file() else "does not exist"
        raise RuntimeFailure(
            f"command {program!r} {problem} (looked at {candidate})",
            hint="a command with '/' is relative to the image tree: check that build.context or "
            "build.steps produce it, with its executable bit set",
        )
    # Relative PATH entries (and empty ones, meaning cwd) are inside the image, like the cwd.
    entries = [d if os.path.isabs(d) else str(tree / d) for d in path_value.split(os.pathsep)]
    found = shutil.which(program, path=os.pathsep.join(entries))
    if found is None:
        raise RuntimeFailure(
            f"command {program!r} not found on PATH (looked in {os.pathsep.join(entries)})",
            hint="install it on this machine, set PATH in run.env, or ship it in the image and "
            "use a relative path such as bin/app",
        )
    return found


def log_tail(path: str | Path, lines: int = 20, max_bytes: int = 1 << 20) -> str:
    """The last `lines` lines of a file, read from its end (logs can be large)."""
    if lines <= 0:
        return ""
    data = b""
    try:
        with open(path, "rb") as f:
            pos = f.seek(0, os.SEEK_END)
            # One newline more than asked for, so the first returned line is complete.
            while pos > 0 and data.count(b"\n") <= lines and len(data) < max_bytes:
                step = min(8192, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
