"""What one host's instances are doing, as last seen: the cache behind SshRuntime's
synchronous `is_alive` / `exit_code`, which the supervisor asks every tick and which must
never wait on the network.

A background task asks the host's helper for the state of every watched instance in one
batched `process.status` call every `interval` seconds, and at once when woken (after a
start or a stop, or when an instance is first asked about). An instance seen exiting has
its log tail fetched *before* its new state is published, so whoever learns "it exited"
can also quote why. While the host does not answer, every instance keeps its last seen
state and `unreachable_since` says since when: deciding that a silent host is lost (and
its instances dead) is the engine's `lost_after`, not a guess made here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from shipyard.errors import ShipyardError
from shipyard.fleet.remote.client import ProcessState
from shipyard.runtime.ssh.helper_session import HelperSession

Key = tuple[int, int]
"""(pid, start time): a process's identity on its host."""

FINAL = ("exited", "gone")
TAIL_BYTES = 16 << 10
KEPT = 256
"""Ended instances remembered per host (their exit codes and log tails)."""


@dataclass
class Watched:
    instance_id: str
    state: ProcessState | None = None
    """None until the host has been asked (assumed running: it was recorded as started)."""
    tail: str = ""


class HostWatch:
    def __init__(self, session: HelperSession, *, interval: float = 0.5, call_timeout: float = 5.0) -> None:
        self.session = session
        self.interval = interval
        self.call_timeout = call_timeout
        self.watched: dict[Key, Watched] = {}
        self.unreachable_since: float | None = None
        """time.monotonic() of the first failed poll since the last good one; None: answering."""
        self.last_error: ShipyardError | None = None
        self.polls = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def watch(self, key: Key, instance_id: str, state: ProcessState | None = None) -> Watched:
        w = self.watched.get(key)
        if w is None:
            w = self.watched[key] = Watched(instance_id, state)
            self.wake()
        elif state is not None:
            w.state = state
        return w

    def answered(self) -> None:
        """The host just answered another call (a start, a stop): it is reachable."""
        self.unreachable_since, self.last_error = None, None

    def wake(self) -> None:
        self._wake.set()
        if self._task is None and not self._closed:
            with contextlib.suppress(RuntimeError):   # no running loop: the next async call starts it
                self._task = asyncio.get_running_loop().create_task(self._run(), name=f"watch:{self.session.name}")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            with contextlib.suppress(Exception):   # a failed poll is recorded in last_error, never fatal
                await self.poll()

    async def poll(self) -> None:
        """Ask the host now about every instance not known to have ended."""
        async with self._lock:
            keys = [k for k, w in self.watched.items() if w.state is None or w.state.state not in FINAL]
            if not keys:
                return
            try:
                states = await self._status(keys)
            except (ShipyardError, TimeoutError) as exc:
                self.last_error = exc if isinstance(exc, ShipyardError) else ShipyardError(
                    f"{self.session.name} did not answer a status call within {self.call_timeout:g}s")
                if self.unreachable_since is None:
                    self.unreachable_since = time.monotonic()
                return
            self.answered()
            self.polls += 1
            for key, state in zip(keys, states, strict=True):
                w = self.watched[key]
                if state.state != "running":
                    w.tail = await self._tail(w.instance_id)
                w.state = state
            self._forget_old()

    async def _status(self, keys: list[Key]) -> list[ProcessState]:
        host = self.session.host
        if host.state != "connected" and host.connects > 0:
            raise ShipyardError(f"{self.session.name} is not connected (reconnecting)")
        async with asyncio.timeout(self.call_timeout):
            client = await self.session.client()
            return await client.status(keys)

    async def _tail(self, instance_id: str) -> str:
        with contextlib.suppress(ShipyardError, TimeoutError):
            async with asyncio.timeout(self.call_timeout):
                chunk = await (await self.session.client()).logs(instance_id, tail=TAIL_BYTES)
            return chunk.data.decode("utf-8", "replace")
        return ""

    def _forget_old(self) -> None:
        ended = [k for k, w in self.watched.items() if w.state is not None and w.state.state in FINAL]
        for key in ended[:-KEPT] if len(ended) > KEPT else []:
            del self.watched[key]

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.session.close()
