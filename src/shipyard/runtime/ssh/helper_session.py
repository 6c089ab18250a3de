"""The remote helper on one host, reached over that host's shared SSH connection.

`HelperSession.client()` makes sure the helper bundle is installed (content-addressed: one
probe asks the host's python3 its version and whether ``<sha>.pyz`` is there; the bundle
travels only when missing, verified by hash on arrival and renamed into place), then runs
it on a process channel of its own (no pty, bytes) and returns a HelperClient. After the
connection drops the pool reconnects; the next `client()` opens a new helper (re-probing
first: the host may have been wiped meanwhile). A host without python3, or with one older
than the bundle needs, is refused with a HelperUnavailable saying what to install."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient, HelperGone
from shipyard.runtime.ssh.channels import CommandResult, RemoteProcess
from shipyard.runtime.ssh.connections import HostConnection
from shipyard.runtime.ssh.errors import SshError

PROBE_SCRIPT = (
    # Runs under whatever python3 the host has (even an old one): no f-strings, no -I.
    "import os, sys\n"
    "sys.stdout.write('%d.%d %d\\n' % (sys.version_info[0], sys.version_info[1],"
    " os.path.isfile(os.path.expanduser('~/' + sys.argv[1] + '/__main__.py'))))\n"
)
STDERR_KEPT = 8192
"""The tail of the helper's stderr kept to explain a helper that died."""


class HelperUnavailable(SshError):
    """The helper cannot run on this host (no python3, one too old, the bundle would not install)."""


def probe_argv(sha: str, python: str = "python3") -> list[str]:
    return [python, "-E", "-s", "-c", PROBE_SCRIPT, bundle.unpacked_path(sha)]


def parse_probe(host: str, python: str, result: CommandResult) -> bool:
    """Whether the bundle is installed; HelperUnavailable when this python3 cannot run it."""
    need = ".".join(str(p) for p in bundle.MIN_PYTHON)
    if result.exit_status == 127:
        raise HelperUnavailable(host, f"{host} has no {python} (the shipyard helper runs under it)",
                                f"install python3 >= {need} on the host (Debian: apt-get install python3)")
    text = result.stdout.decode("ascii", "replace").split()
    if not result.ok or len(text) != 2:
        why = result.stderr.decode("utf-8", "replace").strip()[-300:] or f"exit status {result.exit_status}"
        raise HelperUnavailable(host, f"{python} on {host} could not be asked its version: {why}",
                                f"check that {python} on the host is a working Python >= {need}")
    version, present = text
    try:
        have = tuple(int(p) for p in version.split("."))
    except ValueError:
        have = (0, 0)
    if have < bundle.MIN_PYTHON:
        raise HelperUnavailable(host, f"the shipyard helper needs Python {need} or later, {host}'s {python} "
                                f"is {version}", f"install python3 >= {need} on the host")
    return present == "1"


class HelperSession:
    """One host's helper: installed once, opened on demand, reopened after a drop."""

    def __init__(self, host: HostConnection, *, root: str | None = None, python: str = "python3",
                 helper: tuple[str, bytes] | None = None, timeout: float = 60.0) -> None:
        self.host = host
        self.root = root
        """The helper's state directory on the host (None: ~/.shipyard)."""
        self.python = python
        self.sha, self._bundle = helper or bundle.build()
        self.timeout = timeout
        self.bytes_sent = 0
        """Bundle bytes sent to the host by this session (0 when it already had the bundle)."""
        self.opens = 0
        self._installed_on: int | None = None
        """The host connection's `connects` when the bundle was last known to be there."""
        self._client: HelperClient | None = None
        self._proc: RemoteProcess | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr = bytearray()
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.host.name

    async def _run(self, argv: Sequence[str], stdin: bytes | None = None) -> CommandResult:
        return await self.host.run(argv, stdin=stdin, timeout=self.timeout)

    async def ensure_installed(self) -> bool:
        """True when the bundle had to be sent (and now is installed, verified), False when the
        host already had it."""
        present = parse_probe(self.name, self.python, await self._run(probe_argv(self.sha, self.python)))
        if not present:
            result = await self._run(bundle.install_argv(self.sha, self.python), stdin=self._bundle)
            self.bytes_sent += len(self._bundle)
            if not result.ok:
                why = result.stderr.decode("utf-8", "replace").strip()[-500:] or f"exit {result.exit_status}"
                raise HelperUnavailable(self.name, f"installing the shipyard helper on {self.name} failed: {why}",
                                        "check the free space and permissions of ~/.shipyard on the host")
        self._installed_on = self.host.connects
        return not present

    def _usable(self) -> bool:
        return (self._client is not None and self._proc is not None and not self._client.gone
                and not self._proc.connection_lost)

    async def client(self) -> HelperClient:
        """A live HelperClient for this host, opening (and installing) the helper when needed."""
        async with self._lock:
            if self._usable():
                assert self._client is not None
                return self._client
            await self._drop()
            await self.host.wait_connected()
            if self._installed_on != self.host.connects:
                await self.ensure_installed()
            proc = await self.host.open_process(bundle.launch_argv(self.sha, self.root, self.python))
            self._stderr = bytearray()
            self._stderr_task = asyncio.get_running_loop().create_task(self._keep_stderr(proc))
            client = HelperClient(proc.stdout, proc.stdin)
            self._proc, self._client = proc, client
            try:
                hello = await asyncio.wait_for(client.hello(), self.timeout)
            except (HelperGone, TimeoutError) as e:
                await asyncio.sleep(0.05)   # let the helper's last words arrive
                why = self._stderr.decode("utf-8", "replace").strip()[-500:] or str(e)
                await self._drop()
                raise HelperUnavailable(self.name, f"the shipyard helper on {self.name} did not start: {why}",
                                        "see the message above; the helper runs as "
                                        f"`{' '.join(bundle.launch_argv(self.sha, self.root, self.python))}`"
                                        ) from e
            if hello.get("bundle_sha256") != self.sha:
                await self._drop()
                raise HelperUnavailable(self.name, f"the helper running on {self.name} is not bundle "
                                        f"{self.sha[:12]} (it reports {str(hello.get('bundle_sha256'))[:12]})",
                                        f"remove ~/{bundle.HELPER_DIR} on the host; shipyard installs it again")
            self.opens += 1
            return client

    @property
    def stderr(self) -> str:
        """The tail of the current helper's stderr (tracebacks of helper bugs)."""
        return self._stderr.decode("utf-8", "replace")

    async def _keep_stderr(self, proc: RemoteProcess) -> None:
        """Read stderr as it comes: unread, it would fill the channel window and block the helper."""
        with contextlib.suppress(Exception):
            while chunk := await proc.stderr.read(4096):
                self._stderr += chunk
                del self._stderr[:-STDERR_KEPT]

    async def _drop(self) -> None:
        client, proc, task = self._client, self._proc, self._stderr_task
        self._client = self._proc = self._stderr_task = None
        if client is not None:
            client.close()
        if proc is not None:
            with contextlib.suppress(Exception):
                await proc.close()
        if client is not None:
            await client.aclose()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
