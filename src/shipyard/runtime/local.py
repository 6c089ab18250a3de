"""Instances as plain OS processes on this machine.

Each instance runs in its own session (own process group), so it survives a daemon
restart and can be stopped as a whole, children included. A process is identified by
(pid, start time) read from /proc: after a restart the daemon re-adopts instances it did
not spawn, and a recycled pid (same number, other start time) is never signalled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from datetime import UTC, datetime

from shipyard.errors import RuntimeFailure
from shipyard.launching import (  # noqa: F401 - log_tail re-exported
    BASE_ENV_KEYS,
    instance_environment,
    log_tail,
    resolve_program,
    substitute,
)
from shipyard.procfs import ProcStat, process_start_time, read_proc_stat  # noqa: F401 - re-exported
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.ports import PortAllocator, default_allocator
from shipyard.runtime.sandbox import Enforcement, choose_enforcement, sandbox_for

# How long to wait for the kernel to remove a process after SIGKILL before giving up.
KILL_WAIT_SECONDS = 5.0
_EXIT_CODES_KEPT = 256


def live_group_members(pgid: int) -> list[int]:
    """Pids of not-yet-exited processes in process group `pgid`."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and not stat.dead:
                members.append(int(entry.name))
    return members


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class LocalRuntime:
    """Runtime for OS processes; implements shipyard.engine.ports.Runtime.

    `enforcement` forces a mode (landlock, bubblewrap, verify-only); by default the probe picks
    one (see runtime/sandbox.py), and a forced mode that does not work here raises at once."""

    def __init__(self, ports: PortAllocator | None = None, enforcement: str | None = None) -> None:
        self._ports = ports or default_allocator
        self._sandbox = sandbox_for(choose_enforcement(enforcement))
        # Processes this object spawned, so they can be reaped (no zombies) and their exit code read.
        self._children: dict[tuple[int, int], subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[tuple[int, int], int] = {}

    async def start(self, launch: LaunchSpec) -> Instance:
        tree = launch.tree.absolute()
        if not tree.is_dir():
            raise RuntimeFailure(
                f"cannot start {launch.instance_id}: image tree {tree} does not exist",
                hint="materialize the image again (it may have been garbage-collected)",
            )
        if not launch.command:
            raise RuntimeFailure(
                f"cannot start {launch.instance_id}: run.command is empty",
                hint="set run.command in the spec, e.g. [python3, -m, app, --port, '${PORT}']",
            )
        instance_dir = launch.instance_dir.absolute()
        data_dir = instance_dir / "data"
        log_path = instance_dir / "log"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            open(log_path, "ab").close()
        except OSError as exc:    # a full state disk: refuse before anything runs
            raise RuntimeFailure(f"cannot start {launch.instance_id}: {exc.strerror or exc} writing {instance_dir}",
                                 hint=f"free space in {instance_dir.parent}") from None
        port = self._ports.allocate(launch.host)

        variables = {"PORT": str(port), "SHIPYARD_DATA_DIR": str(data_dir)}
        argv = [substitute(arg, variables) for arg in launch.command]
        env = instance_environment(launch, variables)
        argv[0] = resolve_program(argv[0], tree, env["PATH"])

        confined = self._sandbox.confine(argv, tree=tree, data_dir=data_dir, log_path=log_path, env=env)
        with confined, open(log_path, "ab", buffering=0) as log:
            try:
                proc = subprocess.Popen(
                    confined.argv,
                    cwd=tree,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=confined.pass_fds,
                )
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot start {launch.instance_id}: {argv[0]}: {exc.strerror or exc}",
                    hint="check that the command is an executable for this machine",
                ) from exc
            confined.spawned()
            pid = await confined.service_pid(proc)
            with contextlib.suppress(OSError):     # a note for the log; a full disk must not orphan the process
                log.write(f"--- shipyard: starting {launch.instance_id} pid={pid} at {_now()}\n".encode())
                log.write("".join(f"--- shipyard: {note}\n" for note in confined.notes).encode())

        # The child is not reaped before we read it, so /proc/<pid> exists even if it already exited.
        start_time = process_start_time(pid)
        if start_time is None and pid != proc.pid:
            start_time = 0  # the service (bwrap's child) is already gone: an identity no process has
        if start_time is None:  # pragma: no cover - /proc missing: not Linux
            proc.kill()
            proc.wait()
            raise RuntimeFailure(
                f"cannot read /proc/{proc.pid}/stat for {launch.instance_id}",
                hint="the local runtime needs Linux with /proc mounted",
            )
        self._children[(pid, start_time)] = proc
        return Instance(
            id=launch.instance_id,
            service=launch.service,
            slot=launch.slot,
            image_id=launch.image_id,
            host=launch.host,
            port=port,
            pid=pid,
            start_time=start_time,
            log_path=str(log_path),
            data_dir=str(data_dir),
        )

    @property
    def enforcement(self) -> Enforcement:
        """What keeps instances from writing into their image trees, and why that mode."""
        return self._sandbox.enforcement

    def is_alive(self, instance: Instance) -> bool:
        self._reap()
        stat = read_proc_stat(instance.pid)
        return stat is not None and stat.start_time == instance.start_time and not stat.dead

    def exit_code(self, instance: Instance) -> int | None:
        """Exit status of an instance this object started and that has exited (negative: signal).
        None while it runs, or when it is not our child (re-adopted after a restart)."""
        self._reap()
        return self._exit_codes.get((instance.pid, instance.start_time))

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        """The last `lines` lines of the instance's log (as SshRuntime.log_tail, for health checks)."""
        return log_tail(instance.log_path, lines)

    async def stop(self, instance: Instance, timeout: float) -> None:
        stat = read_proc_stat(instance.pid)
        if stat is not None and stat.start_time != instance.start_time:
            return  # the pid now belongs to another process: ours is long gone
        if not self._running(instance):
            return
        began = time.monotonic()
        self._signal(instance, signal.SIGTERM)
        self._signal(instance, signal.SIGCONT)   # a stopped (hung, SIGSTOPped) process only sees TERM once it runs
        how = "SIGTERM"
        if not await self._wait_gone(instance, max(0.0, timeout)):
            self._signal(instance, signal.SIGKILL)
            how = f"SIGKILL after {timeout:g}s grace"
            if not await self._wait_gone(instance, KILL_WAIT_SECONDS):
                raise RuntimeFailure(
                    f"instance {instance.id} (pid {instance.pid}) is still running "
                    f"{KILL_WAIT_SECONDS:g}s after SIGKILL",
                    hint="it may be stuck in uninterruptible I/O (state D in `ps`); check the disk/NFS",
                )
        code = self.exit_code(instance)
        status = "exit code unknown (not started by this daemon)" if code is None else f"exit code {code}"
        _append_line(
            instance.log_path,
            f"--- shipyard: stopped {instance.id} pid={instance.pid} by {how} "
            f"in {time.monotonic() - began:.2f}s, {status}, at {_now()}",
        )

    def _running(self, instance: Instance) -> bool:
        """The process, or something left in its process group (a child that outlived it), or its
        launcher (bwrap) not yet reaped."""
        if self.is_alive(instance) or (instance.pid, instance.start_time) in self._children:
            return True
        # A process group id cannot be reused while the group has members, so members of
        # group <pid> are leftovers of this instance.
        return bool(live_group_members(instance.pid))

    def _signal(self, instance: Instance, sig: signal.Signals) -> None:
        stat = read_proc_stat(instance.pid)
        if stat is not None and stat.start_time != instance.start_time:
            return
        try:
            os.killpg(instance.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise RuntimeFailure(
                f"not allowed to signal instance {instance.id} (process group {instance.pid})",
                hint="run the daemon as the user that started the instance",
            ) from exc
        if stat is not None and not stat.dead and stat.pgrp != instance.pid:
            # The process left its own group; reach it directly as well.
            try:
                os.kill(instance.pid, sig)
            except ProcessLookupError:
                pass

    async def _wait_gone(self, instance: Instance, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        delay = 0.005
        while self._running(instance):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return True

    def _reap(self) -> None:
        for key, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[key]
                self._exit_codes[key] = self._sandbox.exit_code(proc.returncode)
                while len(self._exit_codes) > _EXIT_CODES_KEPT:
                    del self._exit_codes[next(iter(self._exit_codes))]


def _append_line(path: str, line: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass  # the footer is a courtesy; a removed instance dir must not fail the stop
