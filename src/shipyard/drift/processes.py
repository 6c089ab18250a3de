"""Process drift: is the recorded process still the one that was started, with the argv and
environment it was started with?

The kernel keeps a process's initial argv and environment readable in /proc/<pid>/cmdline
and /proc/<pid>/environ, so what a process was *launched* with can be compared with what
shipyard would launch now. Secret values are never compared, shown or stored: for a
secret only the presence of its name counts."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.drift.report import DriftFinding
from shipyard.errors import RuntimeFailure
from shipyard.launching import instance_environment, remote_command, resolve_program, substitute
from shipyard.procfs import proc_bytes, read_proc_stat
from shipyard.rollout.records import Instance, LaunchSpec, host_command

SECRET_LOOKING = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|_KEY$|^KEY$",
                            re.IGNORECASE)
"""Names treated as secret even when not declared in run.secret_env: an unexpected extra
variable is the likeliest place for a credential nobody declared."""
VALUE_LIMIT = 200


@dataclass(frozen=True)
class ExpectedProcess:
    """What an instance was started with: argv (after ${PORT} substitution, command[0]
    resolved) and the full environment; ``secret_names`` are compared by name only."""

    argv: list[str]
    env: dict[str, str]
    secret_names: frozenset[str] = field(default_factory=frozenset)
    cwd: str | None = None
    """The image tree it runs in, when checked (fleet hosts report it; None: not compared)."""
    uid: int | None = None
    """The user it runs as, when checked (the helper's on a fleet host)."""

    def is_secret(self, name: str) -> bool:
        return name in self.secret_names or bool(SECRET_LOOKING.search(name))


def expected_process(instance: Instance, command: list[str], env: Mapping[str, str], tree: Path,
                     secret_names: Iterable[str] = ()) -> ExpectedProcess:
    """The argv and environment the local runtime gives ``instance`` for this command and env
    (the LaunchSpec's: image env + secrets + database url). Uses the runtime's own helpers,
    so the two cannot disagree about what "started correctly" means."""
    launch = LaunchSpec(instance_id=instance.id, service=instance.service, slot=instance.slot,
                        image_id=instance.image_id, tree=tree, command=list(command), env=dict(env),
                        instance_dir=Path(instance.data_dir).parent, host=instance.host)
    variables = {"PORT": str(instance.port), "SHIPYARD_DATA_DIR": instance.data_dir}
    argv = [substitute(a, variables) for a in host_command(command, instance.host)]   # as the engine's launch_spec
    full_env = instance_environment(launch, variables)
    if argv:
        try:
            argv[0] = resolve_program(argv[0], tree.absolute(), full_env["PATH"])
        except RuntimeFailure:
            pass  # the program is gone from PATH or the tree: compare with the name as written
    return ExpectedProcess(argv, full_env, frozenset(secret_names))


def expected_remote_process(instance: Instance, command: list[str], env: Mapping[str, str], tree: str,
                            uid: int | None = None, secret_names: Iterable[str] = ()) -> ExpectedProcess:
    """What SshRuntime starts ``instance`` with on its host (``tree``: the host's path of the
    image tree, its cwd; ``uid``: the helper's user, who starts it)."""
    launch = LaunchSpec(instance_id=instance.id, service=instance.service, slot=instance.slot,
                        image_id=instance.image_id, tree=Path(tree), command=host_command(command, instance.host),
                        env=dict(env), instance_dir=Path(instance.data_dir).parent, host=instance.host)
    argv, full_env = remote_command(launch, {"PORT": str(instance.port), "SHIPYARD_DATA_DIR": instance.data_dir})
    return ExpectedProcess(argv, full_env, frozenset(secret_names), cwd=tree, uid=uid)


@dataclass(frozen=True)
class LiveProcess:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    uid: int | None = None


class ProcessGone(Exception):
    pass


def _split_nul(raw: bytes) -> list[str]:
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]] if raw else []


def read_process(pid: int, start_time: int) -> LiveProcess:
    """argv and initial environment of that very process. ProcessGone if it is not running
    (dead, zombie or pid recycled); PermissionError if /proc will not tell us."""
    st = read_proc_stat(pid)
    if st is None or st.dead or st.start_time != start_time:
        raise ProcessGone()
    try:
        argv = _split_nul(proc_bytes(pid, "cmdline"))
        env_items = _split_nul(proc_bytes(pid, "environ"))
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone() from exc
    again = read_proc_stat(pid)
    if again is None or again.dead or again.start_time != start_time:
        raise ProcessGone()  # exited (or was replaced) while we read it: what we read is not it
    return LiveProcess(argv, _env_dict(env_items))


def _env_dict(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
    return env


def _clip(value: str) -> str:
    return value if len(value) <= VALUE_LIMIT else value[:VALUE_LIMIT] + f"... ({len(value)} chars)"


def redact_arg(arg: str) -> str:
    """``--db-password=x`` / ``TOKEN=x`` keep their name and lose their value in evidence."""
    name, sep, _ = arg.partition("=")
    return f"{name}=<redacted>" if sep and SECRET_LOOKING.search(name) else arg


def through_wrapper(expected: list[str], live: list[str]) -> bool | None:
    """Whether ``live`` is ``expected`` reached through a wrapper: a ``#!`` interpreter
    ([interp, opt, program, args...]) or a launcher that execs the same-named program
    elsewhere (a pyenv shim, ``env``). None: the argv differs. Arguments after the program
    must always be identical."""
    if live == expected:
        return False
    if not expected or not live:
        return None
    tail = expected[1:]
    if len(live) <= len(tail) or (tail and live[len(live) - len(tail):] != tail):
        return None
    prefix = live[: len(live) - len(tail)]
    if len(prefix) <= 3 and prefix[-1] == expected[0] and len(prefix) > 1:
        return True
    if len(prefix) == 1 and os.path.basename(prefix[0]) == os.path.basename(expected[0]):
        return True
    return None


def compare(expected: ExpectedProcess, live: LiveProcess) -> dict[str, Any]:
    """The differences as evidence (empty: none). Secret values never enter it.

    Started directly, the process must have exactly the expected environment. Started through
    a wrapper (see ``through_wrapper``), the wrapper may add variables and prepend to a
    search path (pyenv's shim adds PYENV_* and prepends to PATH); it still may not remove or
    change a variable shipyard set."""
    diff: dict[str, Any] = {}
    wrapped = through_wrapper(expected.argv, live.argv)
    if wrapped is None:
        diff["argv"] = {"expected": [_clip(redact_arg(a)) for a in expected.argv],
                        "actual": [_clip(redact_arg(a)) for a in live.argv]}
    missing = sorted(set(expected.env) - set(live.env))
    extra = sorted(set(live.env) - set(expected.env))
    if missing:
        diff["env_missing"] = missing
    changed: dict[str, Any] = {}
    prepended: list[str] = []
    for name in sorted(set(expected.env) & set(live.env)):
        want, got = expected.env[name], live.env[name]
        if want == got:
            continue
        if wrapped and got.endswith(os.pathsep + want):
            prepended.append(name)
        elif expected.is_secret(name):
            continue
        else:
            changed[name] = {"expected": _clip(want), "actual": _clip(got)}
    if changed:
        diff["env_changed"] = changed
    if expected.cwd is not None and live.cwd is not None and live.cwd != expected.cwd:
        diff["cwd"] = {"expected": _clip(expected.cwd), "actual": _clip(live.cwd)}
    if expected.uid is not None and live.uid is not None and live.uid != expected.uid:
        diff["uid"] = {"expected": expected.uid, "actual": live.uid}
    if extra and not wrapped:
        diff["env_extra"] = extra
    if diff and wrapped:
        diff["wrapper"] = {"program": _clip(live.argv[0]), "env_added": extra, "path_prepended": prepended}
    return diff


def process_findings(instance: Instance, expected: ExpectedProcess | None) -> list[DriftFinding]:
    """Findings for one recorded instance: gone, drifted, unknown, or none."""
    ident = {"pid": instance.pid, "start_time": instance.start_time}
    try:
        live = read_process(instance.pid, instance.start_time)
    except ProcessGone:
        st = read_proc_stat(instance.pid)
        why = ("the pid is not running" if st is None or st.dead
               else "the pid now belongs to another process (different start time)")
        return [DriftFinding("process", instance.id, instance.service, f"process gone: {why}", [],
                             {**ident, "change": "gone", "reason": why})]
    except OSError as exc:
        return [DriftFinding("unknown", instance.id, instance.service,
                             f"cannot read /proc/{instance.pid}: {exc.strerror or exc}", [],
                             {**ident, "change": "unreadable", "reason": str(exc.strerror or exc)})]
    if expected is None:
        return []
    diff = compare(expected, live)
    return drift_finding(instance, diff) if diff else []


def describe_diff(diff: dict[str, Any]) -> list[str]:
    """The differences of ``compare`` in words, for a finding's detail."""
    parts = []
    if "argv" in diff:
        parts.append("argv differs")
    if "env_missing" in diff:
        parts.append("env lacks " + ", ".join(diff["env_missing"]))
    if "env_extra" in diff:
        parts.append("env has extra " + ", ".join(diff["env_extra"]))
    if "env_changed" in diff:
        parts.append("env values differ for " + ", ".join(diff["env_changed"]))
    if "cwd" in diff:
        parts.append(f"runs in {diff['cwd']['actual']}, not in its image tree")
    if "uid" in diff:
        parts.append(f"runs as uid {diff['uid']['actual']}, not {diff['uid']['expected']}")
    return parts


def drift_finding(instance: Instance, diff: dict[str, Any]) -> list[DriftFinding]:
    ident = {"pid": instance.pid, "start_time": instance.start_time}
    return [DriftFinding("process", instance.id, instance.service,
                         "process drift: " + "; ".join(describe_diff(diff)), [], {**ident, "change": "drift", **diff})]


def environ_of(pid: int) -> dict[str, str] | None:
    """The initial environment of any process; None when it is gone. PermissionError when
    /proc refuses (another user's process, or one that made itself non-dumpable)."""
    try:
        items = _split_nul(proc_bytes(pid, "environ"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return _env_dict(items)


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
