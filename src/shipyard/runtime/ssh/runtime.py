"""Instances on fleet hosts over SSH: the Runtime port's second adapter.

Every host is reached over its one shared SSH connection (connections.py) and the shipyard
helper running there (helper_session.py). `start` ships the image's missing objects,
materialises and verifies its read-only tree on the host, asks the host for a free port,
builds argv and environment exactly as the local runtime does (launching.py) and starts the
instance detached under the helper's per-instance supervisor: it survives the SSH
connection and the controller. A restarted controller re-adopts it by pid + start time.

`is_alive` / `exit_code` never touch the network: they read each host's HostWatch cache,
refreshed by one batched status call per host every `poll_interval` (and at once after a
start or stop). What they answer for instances the cache cannot vouch for:

- never seen yet (just started, or re-adopted by a new controller, before the first poll):
  alive. It was recorded as started; `refresh()` waits for a fresh answer.
- on a host that stops answering: the last seen state, so alive if it was running. A host
  reconnecting for a few seconds must not have its instances replaced; a host that stays
  silent is the engine's to declare lost after `fleet.lost_after`, using
  `unreachable_since(address)`. `stop` on such a host raises a RuntimeFailure at once.

A helper serves one request at a time, so each host has one helper for status polls and a
small pool for starts and stops: a stop waiting out its grace period delays no poll."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import RuntimeFailure, ShipyardError
from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient, HelperError, ProcessState
from shipyard.fleet.remote.transfer import ship_image
from shipyard.images.store import ImageStore
from shipyard.launching import REMOTE_BASE_ENV, remote_command
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.ports import PortAllocator
from shipyard.runtime.ssh.connections import HostConnection, SshConnections
from shipyard.runtime.ssh.errors import SshError
from shipyard.runtime.ssh.helper_session import HelperSession
from shipyard.runtime.ssh.host_watch import HostWatch
from shipyard.runtime.ssh.options import SshTarget

__all__ = ["REMOTE_BASE_ENV", "SshRuntime"]
IDLE_SESSIONS = 4
LOG_BYTES_PER_LINE = 512
"""How much of a log's end is fetched per line asked for (long lines are cut at the start)."""


@dataclass
class _Host:
    conn: HostConnection
    watch: HostWatch
    idle: list[HelperSession] = field(default_factory=list)
    hello: dict[str, Any] | None = None


class SshRuntime:
    """Runtime for instances on SSH hosts; implements shipyard.engine.ports.Runtime.

    `targets` are the inventory's hosts; a LaunchSpec's `host` is one of their addresses."""

    def __init__(self, connections: SshConnections | None, images: ImageStore, targets: Iterable[SshTarget] = (), *,
                 root: str | None = None, python: str = "python3", poll_interval: float = 0.5,
                 connect_wait: float = 5.0, call_timeout: float = 60.0,
                 helper: tuple[str, bytes] | None = None, ports: PortAllocator | None = None) -> None:
        self._images = images
        self._root = root
        self._python = python
        self._helper = helper or bundle.build()
        self._connect_wait = connect_wait
        self._call_timeout = call_timeout
        self._ports = ports or PortAllocator()
        self._poll_interval = poll_interval
        self._hosts: dict[str, _Host] = {}
        if targets:
            assert connections is not None, "targets need the connections that reach them"
            self.add_targets(connections, targets)

    def add_targets(self, connections: SshConnections, targets: Iterable[SshTarget]) -> None:
        """Reach `targets` through `connections` from now on (a fleet spec the engine has just
        met). A host already known through the same connection is kept as it is, with its
        watch; one now reached differently (another pool, port or name) is watched afresh."""
        for t in targets:
            conn = connections.host(t)
            known = self._hosts.get(t.address)
            if known is not None and known.conn is conn:
                continue
            watch = HostWatch(self._session(conn), interval=self._poll_interval,
                              call_timeout=min(self._call_timeout, max(self._connect_wait, 1.0)))
            self._hosts[t.address] = _Host(conn, watch)
            if known is not None:
                asyncio.get_running_loop().create_task(known.watch.close())

    def knows(self, address: str) -> bool:
        """True when `address` is a host this runtime reaches (LaunchSpec.host / Instance.host)."""
        return address in self._hosts

    def _session(self, conn: HostConnection) -> HelperSession:
        return HelperSession(conn, root=self._root, python=self._python, helper=self._helper,
                             timeout=self._call_timeout)

    def _host(self, address: str, what: str) -> _Host:
        h = self._hosts.get(address)
        if h is None:
            raise RuntimeFailure(f"cannot {what}: {address} is not a host of this fleet",
                                 hint="list the host under fleet.hosts (by this address) in the spec")
        return h

    @contextlib.asynccontextmanager
    async def _client(self, h: _Host, what: str) -> AsyncIterator[HelperClient]:
        """A helper of the host's work pool, for one start or stop; SSH and helper failures
        become RuntimeFailures naming the host."""
        try:
            await h.conn.wait_connected(self._connect_wait)
        except SshError as exc:
            raise RuntimeFailure(f"cannot {what}: {exc.message}", hint=exc.hint) from None
        session = h.idle.pop() if h.idle else self._session(h.conn)
        ok = False
        try:
            client = await session.client()
            yield client
            ok = True
            h.watch.answered()
        except HelperError as exc:
            ok = not client_gone(exc)
            raise RuntimeFailure(f"cannot {what} on {h.conn.name}: {exc.message}", hint=exc.hint) from None
        except RuntimeFailure:
            ok = True
            raise
        except ShipyardError as exc:
            raise RuntimeFailure(f"cannot {what} on {h.conn.name}: {exc.message}", hint=exc.hint) from None
        finally:
            if ok and len(h.idle) < IDLE_SESSIONS:
                h.idle.append(session)
            else:
                await session.close()

    # Runtime port ------------------------------------------------------------------------------
    async def start(self, launch: LaunchSpec) -> Instance:
        what = f"start {launch.instance_id}"
        h = self._host(launch.host, what)
        if not launch.command:
            raise RuntimeFailure(f"cannot {what}: run.command is empty",
                                 hint="set run.command in the spec, e.g. [python3, -m, app, --port, '${PORT}']")
        async with self._client(h, what) as client:
            if h.hello is None:
                h.hello = await client.hello()
            tree = await self._verified_tree(client, launch.image_id, what)
            port = await client.free_port(launch.host, self._ports.recent(launch.host))
            self._ports.note(launch.host, port)
            data_dir = f"{h.hello['instances_root']}/{launch.instance_id}/data"
            variables = {"PORT": str(port), "SHIPYARD_DATA_DIR": data_dir}
            argv, env = remote_command(dataclasses.replace(launch, tree=Path(tree)), variables)
            started = await client.start(launch.instance_id, argv, env, tree)
        key = (started.pid, started.start_time)
        h.watch.watch(key, launch.instance_id, ProcessState(*key, "running"))
        h.watch.wake()
        return Instance(id=launch.instance_id, service=launch.service, slot=launch.slot,
                        image_id=launch.image_id, host=launch.host, port=port, pid=started.pid,
                        start_time=started.start_time, log_path=started.log, data_dir=started.data_dir)

    async def _verified_tree(self, client: HelperClient, image_id: str, what: str) -> str:
        """The image's tree on the host, shipped if needed and verified; a tree that fails
        verification is quarantined and made afresh once."""
        try:
            for _attempt in (1, 2):
                shipped = await ship_image(client, self._images, image_id)
                result = await client.verify(shipped.image_id, "metadata")
                if result.clean:
                    return shipped.tree
                await client.quarantine(shipped.image_id)
        except HelperError:
            raise
        except ShipyardError as exc:
            raise RuntimeFailure(f"cannot {what}: {exc.message}", hint=exc.hint) from None
        raise RuntimeFailure(f"cannot {what}: the image tree {shipped.tree} does not verify even when made afresh",
                             hint="check the host's disk and who writes under the helper's images/ directory")

    def is_alive(self, instance: Instance) -> bool:
        """True while that pid + start time runs, as last seen (see the module docstring)."""
        h = self._hosts.get(instance.host)
        if h is None:
            return False
        w = h.watch.watch((instance.pid, instance.start_time), instance.id)
        return w.state is None or w.state.state == "running"

    def exit_code(self, instance: Instance) -> int | None:
        """How it ended, from the host's exit record (known even after a controller restart)."""
        h = self._hosts.get(instance.host)
        if h is None:
            return None
        w = h.watch.watched.get((instance.pid, instance.start_time))
        return None if w is None or w.state is None else w.state.exit_code

    async def stop(self, instance: Instance, timeout: float) -> None:
        what = f"stop {instance.id}"
        h = self._host(instance.host, what)
        key = (instance.pid, instance.start_time)
        async with self._client(h, what) as client:
            [state] = await client.stop_many([key], max(0.0, timeout))
        h.watch.watch(key, instance.id, state)
        if state.stuck:
            raise RuntimeFailure(f"instance {instance.id} (pid {instance.pid} on {h.conn.name}) is still "
                                 "running after SIGKILL",
                                 hint="it may be stuck in uninterruptible I/O (state D in `ps`); check the host")
        with contextlib.suppress(Exception):   # the log tail, while the helper is at hand
            await h.watch.poll()

    # beyond the port ---------------------------------------------------------------------------
    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        """The end of an ended instance's log, fetched when its exit was seen ("" before)."""
        h = self._hosts.get(instance.host)
        w = h.watch.watched.get((instance.pid, instance.start_time)) if h else None
        if w is None or lines <= 0:
            return ""
        return "\n".join(w.tail.splitlines()[-lines:])

    async def read_log(self, instance: Instance, lines: int = 100) -> str:
        """The last `lines` lines of the instance's log, read on its host (`shipyard logs`)."""
        h = self._host(instance.host, f"read the log of {instance.id}")
        if lines <= 0:
            return ""
        async with self._client(h, f"read the log of {instance.id}") as client:
            chunk = await client.logs(instance.id, tail=LOG_BYTES_PER_LINE * lines, limit=LOG_BYTES_PER_LINE * lines)
        text = bytes(chunk.data).decode("utf-8", "replace")
        kept = text.splitlines()
        if chunk.offset > 0 and kept:
            kept = kept[1:]         # the first line read may be cut
        return "\n".join(kept[-lines:])

    async def stop_unrecorded(self, address: str, recorded: Callable[[str], bool], timeout: float) -> list[str]:
        """Stop every instance running on the host whose id `recorded` does not know (started
        by a controller that died before recording it); returns their ids."""
        what = f"look for unrecorded instances on {address}"
        h = self._host(address, what)
        async with self._client(h, what) as client:
            strays = [p for p in await client.running() if not recorded(p["instance_id"])]
            if strays:
                await client.stop_many([(p["pid"], p["start_time"]) for p in strays], max(0.0, timeout))
        return [p["instance_id"] for p in strays]

    def unreachable_since(self, address: str) -> float | None:
        """time.monotonic() since which `address` has not answered status polls (None: it answers)."""
        return self._host(address, "ask about a host").watch.unreachable_since

    async def refresh(self, instances: Iterable[Instance] = ()) -> None:
        """Watch `instances` (re-adopted ones, say) and poll every host now: afterwards
        is_alive/exit_code reflect what the hosts that answer say."""
        for inst in instances:
            self.is_alive(inst)
        await asyncio.gather(*(h.watch.poll() for h in self._hosts.values()), return_exceptions=True)

    async def close(self) -> None:
        """End this runtime's helpers and pollers (the instances and SSH connections stay)."""
        for h in self._hosts.values():
            idle, h.idle = h.idle, []
            await asyncio.gather(h.watch.close(), *(s.close() for s in idle), return_exceptions=True)


def client_gone(exc: HelperError) -> bool:
    return exc.code == "gone"
