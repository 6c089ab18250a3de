"""One persistent SSH connection per fleet host, shared by every caller.

Each caller gets its own channel on the host's one connection (sshd's MaxSessions bounds
how many are open at once, so a per-host semaphore does too). A background task owns the
connection: it connects (a bounded number of handshakes at once across the fleet), waits
for the drop, and reconnects with capped, jittered exponential backoff. A call made while
the host is away waits up to `reconnect_wait` for it to come back; a call in flight when
it drops fails with SshConnectionLost. Host keys are checked by hostkeys.HostKeyCheck;
passwords and keyboard-interactive are never tried."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import asyncssh

from shipyard.runtime.ssh.backoff import Backoff
from shipyard.runtime.ssh.channels import (
    CommandResult,
    RemoteProcess,
    kill_argv,
    lost,
    read_remote_pid,
    remote_command,
    signal_name,
    wrapped_command,
)
from shipyard.runtime.ssh.errors import (
    HostKeyChanged,
    HostKeyRefused,
    HostUnreachable,
    SshAuthFailed,
    SshCommandTimeout,
    SshError,
)
from shipyard.runtime.ssh.hostkeys import HostKeyCheck, TrustedKey
from shipyard.runtime.ssh.options import SshOptions, SshTarget, load_identity


class HostConnection:
    """The shared connection to one host; `run` and `open_process` are its only doors."""

    def __init__(self, target: SshTarget, options: SshOptions, keys: list[asyncssh.SSHKey] | None,
                 connect_slots: asyncio.Semaphore, on_trust: Callable[[TrustedKey], None],
                 rng: random.Random | None = None) -> None:
        self.target = target
        self.name = target.name
        self.port = target.port or options.port
        self.options = options
        self._keys = keys
        self._connect_slots = connect_slots
        self._on_trust = on_trust
        self._sessions = asyncio.Semaphore(options.max_sessions)
        self._backoff = Backoff(options.backoff, rng)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error: SshError | None = None
        self.connects = 0
        self.drops = 0
        self.delays: list[float] = []
        """Every backoff delay slept, in order (for /metrics and tests)."""

    @property
    def state(self) -> str:
        if self._closed:
            return "closed"
        if self._conn is not None:
            return "connected"
        return "connecting" if self.last_error is None else "disconnected"

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"ssh:{self.name}")

    async def wait_connected(self, timeout: float | None = None) -> asyncssh.SSHClientConnection:
        """The live connection, waiting up to `timeout` (default reconnect_wait) for one. A host
        whose key or identity was refused fails at once: waiting would not change that."""
        self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.options.reconnect_wait if timeout is None else timeout)
        while True:
            if self._closed:
                raise HostUnreachable(self.name, f"the SSH connection to {self.name} was closed")
            if self._conn is not None:
                return self._conn
            if isinstance(self.last_error, HostKeyRefused | SshAuthFailed):
                raise self.last_error
            remaining = deadline - loop.time()
            if remaining <= 0:
                why = f": {self.last_error.message}" if self.last_error else ""
                raise HostUnreachable(
                    self.name, f"no SSH connection to {self.name} ({self.target.address}:{self.port}) "
                    f"within {self.options.reconnect_wait if timeout is None else timeout:g}s{why}",
                    "check that the host is up and its sshd listening; shipyard keeps retrying with backoff "
                    f"(at most every {self.options.backoff.cap:g}s)")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None,
                  wait: float | None = None) -> CommandResult:
        """Run argv on the host (no pty: `setsid -f` children survive), feeding `stdin` then EOF.
        On timeout the command's process group is killed and SshCommandTimeout is raised."""
        command = remote_command(argv)
        loop = asyncio.get_running_loop()
        async with self._sessions:
            conn = await self.wait_connected(wait)
            began = loop.time()
            proc: asyncssh.SSHClientProcess[bytes] | None = None
            pid: int | None = None
            try:
                async with asyncio.timeout(timeout):
                    proc = await self._open(conn, argv)
                    if stdin:
                        proc.stdin.write(stdin)
                    proc.stdin.write_eof()
                    pid = await read_remote_pid(proc)
                    stdout, stderr = await proc.communicate()
                    await proc.wait_closed()     # sshd frees the session once both sides closed
            except TimeoutError:
                if proc is not None:
                    proc.close()
                if pid is not None:
                    await self.signal(pid, "KILL")
                raise SshCommandTimeout(
                    self.name, f"`{command}` on {self.name} did not finish within {timeout:g}s; its process "
                    "group was killed", "raise the timeout if the command is slow, or look on the host "
                    "for what it waits on") from None
            except SshError:
                raise
            except (asyncssh.Error, OSError) as e:
                raise lost(self.name, argv) from e
            if proc.exit_status is None and proc.exit_signal is None:
                raise lost(self.name, argv)
            return CommandResult(self.name, tuple(argv), proc.exit_status if proc.exit_signal is None else None,
                                 signal_name(proc), bytes(stdout or b""), bytes(stderr or b""),
                                 loop.time() - began)

    async def _open(self, conn: asyncssh.SSHClientConnection, argv: Sequence[str]
                    ) -> asyncssh.SSHClientProcess[bytes]:
        """A session channel running argv. sshd counts a session until it has our close, a
        moment after we let its slot go: a refusal then is retried briefly, not reported."""
        delay = 0.01
        while True:
            try:
                return await conn.create_process(wrapped_command(argv), encoding=None)
            except asyncssh.ChannelOpenError as e:
                if conn.is_closed():
                    raise lost(self.name, argv) from e
                if delay > 0.5:
                    raise SshError(self.name, f"{self.name} refused a new SSH session: {e.reason}",
                                   "the host's sshd MaxSessions may be lower than fleet ssh max_sessions, "
                                   "or another client shares the connection") from e
                await asyncio.sleep(delay)
                delay *= 2

    async def signal(self, pid: int, name: str = "KILL") -> None:
        """Signal a remote process group over a channel of its own (best effort: a host that is
        gone has nothing left to signal)."""
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await conn.run(remote_command(kill_argv(pid, name)), stdin=asyncssh.DEVNULL)

    async def open_process(self, argv: Sequence[str], *, wait: float | None = None) -> RemoteProcess:
        """A long-lived process on its own channel; it holds one session slot until closed."""
        await self._sessions.acquire()
        try:
            conn = await self.wait_connected(wait)
            try:
                proc = await self._open(conn, argv)
                async with asyncio.timeout(self.options.connect_timeout):
                    pid = await read_remote_pid(proc)
            except asyncssh.ChannelOpenError:
                raise
            except (asyncssh.Error, OSError, TimeoutError) as e:
                raise lost(self.name, argv, "process") from e
        except BaseException:
            self._sessions.release()
            raise
        return RemoteProcess(self.name, argv, proc, conn, self._sessions.release, pid, self.signal)

    async def close(self) -> None:
        self._closed = True
        self._pulse()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    # --- the connection's owner ----------------------------------------------------------------

    def _pulse(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                conn = await self._connect_once()
            except SshError as e:
                self.last_error = e
                self._pulse()
                await self._sleep_backoff()
                continue
            except Exception as e:   # a bug or an asyncssh surprise must not end the retries silently
                self.last_error = HostUnreachable(self.name, f"cannot connect to {self.name}: "
                                                  f"{type(e).__name__}: {e}")
                self._pulse()
                await self._sleep_backoff()
                continue
            up_since = loop.time()
            self._conn, self.last_error = conn, None
            self.connects += 1
            self._pulse()
            await conn.wait_closed()
            self._conn = None
            if self._closed:
                return
            self.drops += 1
            self.last_error = HostUnreachable(self.name, f"the SSH connection to {self.name} dropped")
            self._pulse()
            if loop.time() - up_since >= self.options.backoff.stable_after:
                self._backoff.reset()
            await self._sleep_backoff()

    async def _sleep_backoff(self) -> None:
        delay = self._backoff.next()
        self.delays.append(delay)
        await asyncio.sleep(delay)

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        o = self.options
        check = HostKeyCheck(self.name, self.target.address, self.port, o.known_hosts.expanduser(),
                             o.trust_new_hosts)
        where = f"{self.target.address}:{self.port}"
        try:
            async with self._connect_slots:
                conn, _client = await asyncssh.create_connection(
                    lambda: _Client(check), self.target.address, self.port, username=o.user,
                    known_hosts=check.known, client_keys=self._keys, agent_path=None, config=[],
                    password_auth=False, kbdint_auth=False, gss_auth=False, host_based_auth=False,
                    x509_trusted_certs=None, connect_timeout=o.connect_timeout,
                    keepalive_interval=o.keepalive_interval, keepalive_count_max=o.keepalive_count_max)
        except asyncssh.HostKeyNotVerifiable as e:
            raise check.refusal or HostKeyRefused(
                self.name, f"host key of {self.name} ({where}) refused: {e.reason}",
                f"check the host's line in {check.path}") from None
        except asyncssh.KeyExchangeFailed as e:
            if check.expected and "host key" in e.reason.lower():
                raise check.changed(f"none of the key types listed for it ({e.reason})") from None
            raise HostUnreachable(self.name, f"SSH key exchange with {self.name} ({where}) failed: {e.reason}",
                                  "the host's sshd and shipyard share no algorithm; check its sshd_config") from None
        except asyncssh.PermissionDenied as e:
            raise SshAuthFailed(
                self.name, f"{self.name} ({where}) refused {o.user}'s key: {e.reason}",
                f"add the public key of {o.identity or '~/.ssh/id_*'} to ~{o.user}/.ssh/authorized_keys on "
                "the host (password authentication is never used)") from None
        except (asyncssh.Error, OSError, TimeoutError) as e:
            text = getattr(e, "reason", None) or _os_words(e, o.connect_timeout) or type(e).__name__
            raise HostUnreachable(self.name, f"cannot open an SSH connection to {self.name} ({where}): {text}",
                                  "check that the host is up and sshd listens there") from None
        try:
            fact = check.record()
        except HostKeyChanged:
            conn.close()
            raise
        if fact is not None:
            self._on_trust(fact)
        return conn


def _os_words(e: BaseException, timeout: float) -> str:
    """A failed connect in words ("[Errno 111] Connect call failed ('10.0.0.5', 22)" says less)."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens on that port: is sshd running?)"
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g}s (the host is down or a firewall drops the packets)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return str(e)


class _Client(asyncssh.SSHClient):
    def __init__(self, check: HostKeyCheck) -> None:
        self._check = check

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        return self._check.accept(key)


class SshConnections:
    """Every host's shared connection: `host(target)` returns the same HostConnection to every caller."""

    def __init__(self, options: SshOptions, *, on_trust: Callable[[TrustedKey], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.options = options
        self._keys = load_identity(options)
        self._slots = asyncio.Semaphore(options.max_connects)
        self._hosts: dict[str, HostConnection] = {}
        self._external_on_trust = on_trust
        self._rng = rng
        self.trusted: list[TrustedKey] = []
        """First-seen keys recorded under trust_new_hosts, for the caller's audit log."""

    def _trust(self, fact: TrustedKey) -> None:
        self.trusted.append(fact)
        if self._external_on_trust is not None:
            self._external_on_trust(fact)

    def host(self, target: SshTarget) -> HostConnection:
        hc = self._hosts.get(target.name)
        if hc is None or hc.target != target:
            if hc is not None:
                asyncio.get_running_loop().create_task(hc.close())
            hc = self._hosts[target.name] = HostConnection(target, self.options, self._keys, self._slots,
                                                           self._trust, self._rng)
        hc.start()
        return hc

    def __iter__(self) -> Iterator[HostConnection]:
        return iter(list(self._hosts.values()))

    async def connect_all(self, targets: Iterable[SshTarget], timeout: float | None = None
                          ) -> dict[str, SshError | None]:
        """Connect to every host at once (handshakes bounded by max_connects); None = connected."""
        hosts = [self.host(t) for t in targets]

        async def one(hc: HostConnection) -> SshError | None:
            try:
                await hc.wait_connected(timeout)
            except SshError as e:
                return e
            return None
        results = await asyncio.gather(*(one(hc) for hc in hosts))
        return {hc.name: r for hc, r in zip(hosts, results, strict=True)}

    async def close(self) -> None:
        hosts, self._hosts = list(self._hosts.values()), {}
        await asyncio.gather(*(hc.close() for hc in hosts))

    async def __aenter__(self) -> SshConnections:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["HostConnection", "SshConnections", "SshOptions", "SshTarget", "load_identity"]
