"""What a channel on a host connection gives back: a finished command's outcome, or a
long-lived remote process with byte streams (what the remote helper talks over)."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncssh

from shipyard.runtime.ssh.errors import SshConnectionLost


def remote_command(argv: Sequence[str]) -> str:
    """The one string sshd hands to the login shell: every argument quoted, so no argument is
    ever interpreted by that shell (an argv in, never a user's shell string)."""
    if isinstance(argv, str) or not argv:
        raise TypeError("a remote command is a non-empty argv list, never a shell string")
    return shlex.join(argv)


PID_PREFIX = "printf '%s\\n' \"$$\" >&2; exec "


def wrapped_command(argv: Sequence[str]) -> str:
    """The command as sent: the login shell first tells its pid on stderr's first line, then
    becomes argv. sshd made that pid a session leader, so `kill -KILL -- -pid` on a second
    channel ends the command's whole process group; channel signals alone do not reach a
    root login's commands (OpenSSH refuses them without privilege separation)."""
    return PID_PREFIX + remote_command(argv)


async def read_remote_pid(proc: asyncssh.SSHClientProcess[bytes]) -> int | None:
    line = await proc.stderr.readline()
    try:
        return int(line)
    except ValueError:
        return None


def kill_argv(pid: int, signal: str = "KILL") -> list[str]:
    return ["kill", f"-{signal}", "--", f"-{pid}"]


@dataclass(frozen=True)
class CommandResult:
    host: str
    argv: tuple[str, ...]
    exit_status: int | None
    """None when the command was ended by a signal (then `exit_signal` names it)."""
    exit_signal: str | None
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def signal_name(proc: asyncssh.SSHClientProcess[bytes]) -> str | None:
    sig = proc.exit_signal
    return sig[0] if sig else None


def lost(host: str, argv: Sequence[str], what: str = "command") -> SshConnectionLost:
    return SshConnectionLost(
        host, f"the SSH connection to {host} dropped while the {what} `{remote_command(argv)}` was running: "
        "whether it finished on the host is unknown",
        "the connection is being re-established with backoff; check the host's state before repeating "
        "anything that is not idempotent")


class RemoteProcess:
    """A process on a host kept open on its own channel of the shared connection.

    `stdin` (write / drain / write_eof), `stdout` and `stderr` (read / readexactly / readline)
    are asyncssh's byte streams. A dropped connection ends them (EOF or an error); `wait`
    then raises SshConnectionLost instead of reporting an exit status it cannot know."""

    def __init__(self, host: str, argv: Sequence[str], proc: asyncssh.SSHClientProcess[bytes],
                 conn: asyncssh.SSHClientConnection, release: Callable[[], None], pid: int | None,
                 signaller: Callable[[int, str], Awaitable[None]]) -> None:
        self.host = host
        self.pid = pid
        """The remote process's pid (its process group id too), or None if it did not say."""
        self._signaller = signaller
        self.argv = tuple(argv)
        self._proc = proc
        self._conn = conn
        self._release: Callable[[], None] | None = release
        self._loop = asyncio.get_running_loop()
        self._began = self._loop.time()

    @property
    def stdin(self) -> asyncssh.SSHWriter[bytes]:
        return self._proc.stdin

    @property
    def stdout(self) -> asyncssh.SSHReader[bytes]:
        return self._proc.stdout

    @property
    def stderr(self) -> asyncssh.SSHReader[bytes]:
        return self._proc.stderr

    @property
    def connection_lost(self) -> bool:
        return self._conn.is_closed()

    async def send_signal(self, name: str) -> None:
        """`TERM`, `KILL`, ...: to the remote process's whole process group."""
        if self.pid is not None:
            await self._signaller(self.pid, name)

    async def wait(self, timeout: float | None = None) -> CommandResult:
        """The exit status once the process ends (its output is whatever was not read yet)."""
        try:
            async with asyncio.timeout(timeout):
                await self._proc.wait_closed()
        except (asyncssh.Error, OSError) as e:
            raise lost(self.host, self.argv, "process") from e
        finally:
            if self._proc.is_closing():
                self._free()
        if self._proc.exit_status is None and self._proc.exit_signal is None:
            raise lost(self.host, self.argv, "process")
        return CommandResult(self.host, self.argv, self._proc.exit_status, signal_name(self._proc), b"", b"",
                             self._loop.time() - self._began)

    async def close(self) -> None:
        """Close the channel (the remote side sees EOF on stdin and a hang-up) and free its slot."""
        self._proc.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._proc.wait_closed(), 5)
        self._free()

    def _free(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    async def __aenter__(self) -> RemoteProcess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
