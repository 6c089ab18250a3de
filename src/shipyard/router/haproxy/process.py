"""Start, adopt, reload and stop one HAProxy in master-worker mode (`-W -S <master socket>`).

HAProxy runs in its own session, so it outlives the daemon and keeps serving; a new daemon
re-adopts it from its pid file (the master's pid, checked against /proc so a recycled pid
is never signalled). The configuration is checked (`haproxy -c`) before it is used, so a
bad one never replaces a running worker. A missing binary is a clear error naming the
Debian package."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from shipyard.errors import RouterError
from shipyard.procfs import pid_alive
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.runtime_api import RuntimeApi

HAPROXY = "/usr/sbin/haproxy"
START_TIMEOUT = 10.0
POOL_ARGS = ("-dMglobal",)
"""A process-wide cache of freed buffers (HAProxy 2.6's `-dM global`, management.txt). Each
request kept for a retry (`retry-on empty-response`) holds one more 16 KB buffer, and 64
requests in flight then overflow the worker's 512 KB local cache: every buffer went back to
malloc and came out again (benchmarks/haproxy_variants.py `pools-global`: ~1.5 µs of the ~17
µs a request costs, nothing without the retry copy). Kept across reloads (the master
re-executes itself with the same arguments)."""
STOP_TIMEOUT = 10.0
LOG_TAIL = 2000


def find_binary(binary: str | None = None) -> str:
    """The haproxy executable, or RouterError saying which package to install."""
    for candidate in (binary, os.environ.get("SHIPYARD_HAPROXY"), HAPROXY, shutil.which("haproxy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RouterError("router kind haproxy needs HAProxy 2.6+, and no haproxy executable was found "
                      f"(looked for {binary or HAPROXY} and on PATH)",
                      "install the Debian package `haproxy` (apt-get install haproxy), or use "
                      "`router: {kind: embedded}`")


class HAProxyProcess:
    """One HAProxy master (and its worker) whose files live in `files.root`."""

    def __init__(self, files: Files, binary: str | None = None) -> None:
        self.files = files
        self.binary = binary
        self.api = RuntimeApi(files.admin_socket)
        self._proc: subprocess.Popen[bytes] | None = None
        self.master_pid: int | None = None
        self.worker_pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.files.root / "haproxy.log"

    # -- state ----------------------------------------------------------------------------

    def exited(self) -> bool:
        """True once the master last known is gone (a poll or one /proc read, no socket I/O)."""
        if self._proc is not None:
            return self._proc.poll() is not None
        if self.master_pid is None:
            return False
        return not _running(self.master_pid)

    async def answering(self) -> bool:
        """The worker answers its admin socket (and says which pid it is)."""
        try:
            pid = int((await RuntimeApi(self.files.admin_socket, 2.0).info()).get("Pid", "0"))
        except (RouterError, ValueError):
            return False
        if pid <= 0:
            return False
        self.worker_pid = pid
        return True

    async def adopt(self) -> bool:
        """Take over a HAProxy an earlier daemon started, if its pid file names a live one of ours."""
        try:
            pid = int(self.files.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if not self._is_ours(pid) or not await self.answering():
            return False
        self.master_pid = pid
        self._proc = None
        return True

    def pids(self) -> set[int]:
        return {p for p in (self.master_pid, self.worker_pid) if p and pid_alive(p)}

    # -- changes ----------------------------------------------------------------------------

    async def check(self, text: str) -> None:
        """Write the configuration and have HAProxy check it; RouterError with its words if bad."""
        self.files.root.mkdir(parents=True, exist_ok=True)
        tmp = self.files.config.with_suffix(".cfg.new")
        tmp.write_text(text)
        proc = await asyncio.create_subprocess_exec(find_binary(self.binary), "-c", "-q", "-f", str(tmp),
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RouterError("HAProxy took over 30 s to check its configuration", f"see {tmp}") from None
        if proc.returncode != 0:
            words = out.decode("utf-8", "replace").strip()[-LOG_TAIL:]
            raise RouterError(f"HAProxy refused the configuration shipyard wrote: {words}",
                              f"see {tmp}; this is a shipyard bug, please report it")
        os.replace(tmp, self.files.config)

    async def start(self, text: str, sockets_from: Path | None = None) -> None:
        """Start a new master-worker HAProxy on `text`; returns once its worker answers.
        `sockets_from`: a unix socket answering `_getsocks` whose listening sockets HAProxy
        takes instead of binding its own (`-x`, as when it reloads; sockets.py)."""
        binary = find_binary(self.binary)
        await self.check(text)
        with contextlib.suppress(FileNotFoundError):
            self.files.admin_socket.unlink()
        argv = [binary, "-W", *POOL_ARGS, "-S", f"{self.files.master_socket},mode,600", "-f", str(self.files.config),
                *(["-x", str(sockets_from)] if sockets_from else [])]
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        self._proc, self.master_pid, self.worker_pid = proc, proc.pid, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                self._proc = self.master_pid = None
                raise RouterError(f"HAProxy exited at start (status {proc.returncode}): {self._tail(offset)}",
                                  f"see {self.log_path}")
            if await self.answering():
                return
            if loop.time() > deadline:
                self.kill()
                raise RouterError(f"HAProxy did not answer on {self.files.admin_socket} within "
                                  f"{START_TIMEOUT:g}s", f"see {self.log_path}")
            await asyncio.sleep(0.05)

    async def reload(self, text: str) -> None:
        """A new worker on a new configuration (the service set changed): the master's `reload`.
        Returns once a worker other than the old one answers; the old one finishes its requests."""
        await self.check(text)
        old = self.worker_pid
        reader, writer = await asyncio.open_unix_connection(str(self.files.master_socket))
        try:
            writer.write(b"reload\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(reader.read(), 5.0)
        finally:
            writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self.exited():
                raise RouterError("HAProxy exited while reloading", f"see {self.log_path}")
            if await self.answering() and self.worker_pid != old:
                return
            await asyncio.sleep(0.05)
        raise RouterError(f"HAProxy did not start a new worker within {START_TIMEOUT:g}s of a reload",
                          f"see {self.log_path}")

    async def stop(self) -> None:
        """Graceful stop (SIGUSR1: finish what is in flight), SIGKILL of the group after 10 s."""
        pid = self.master_pid
        if pid is None or not _running(pid):
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while loop.time() < deadline and not self._gone(pid):
            await asyncio.sleep(0.05)
        if not self._gone(pid):
            self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL the master's session (master and workers)."""
        if self.master_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.master_pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    def how_it_ended(self) -> dict[str, object]:
        """For the engine's crash record: pid, exit code or signal when it was our child."""
        pid = self.master_pid
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return {"pid": pid, "exit_code": None, "signal": None,
                    "reason": "it is gone (its exit status is unknown)" if self._proc is None
                    else "it stopped answering its admin socket"}
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return {"pid": pid, "exit_code": None, "signal": name, "reason": f"it was killed by {name}"}
        return {"pid": pid, "exit_code": code, "signal": None, "reason": f"it exited with status {code}"}

    # -- helpers ----------------------------------------------------------------------------

    def _gone(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is not None
        return not _running(pid)

    def _forget(self) -> None:
        self._proc = self.master_pid = self.worker_pid = None
        with contextlib.suppress(FileNotFoundError):
            self.files.pid_file.unlink()

    def _is_ours(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(str(self.files.config)) in argv and _running(pid)

    def _tail(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace").strip()
        except OSError:
            return "no output"
        lines = [ln for ln in text.splitlines() if "ALERT" in ln] or text.splitlines() or ["no output"]
        return lines[-1][-LOG_TAIL:]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie the new parent has not reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def check_free(service: str, listen: str) -> None:
    """A new listen address must be free before HAProxy is told to bind it: a reload that fails
    to bind keeps the old worker and says so only in its log."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as e:
        raise RouterError(f"HAProxy for {service} cannot listen on {listen}: {e}",
                          "change `listen` in the spec") from None
    for family, kind, proto, _name, addr in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as e:
                reason = os.strerror(e.errno).lower() if e.errno else str(e)
                raise RouterError(f"HAProxy for {service} cannot listen on {listen}: {reason}",
                                  f"another process uses {listen}: stop it, or change `listen` in the spec"
                                  if e.errno == errno.EADDRINUSE else "change `listen` in the spec") from None
