"""The fleet drift scan over SSH: one ``drift.scan`` request per host, every host at once
(bounded), judged by drift/hosts.py into one DriftReport. Implements
shipyard.engine.ports.FleetDriftScan.

Each host gets a helper of its own for scans, apart from SshRuntime's: a helper serves one
request at a time, and a full re-hash must not hold up the runtime's status polls. A host
that does not answer within the time allowed is an ``unknown`` finding naming it (never a
clean one), and its helper is dropped so the next scan does not queue behind a stuck one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shipyard.drift.fleet import FleetHost, FleetInputs, host_request
from shipyard.drift.hosts import fleet_report
from shipyard.drift.report import DriftReport, Mode
from shipyard.errors import RuntimeFailure, ShipyardError
from shipyard.fleet.remote import bundle
from shipyard.runtime.ssh.connections import HostConnection, SshConnections
from shipyard.runtime.ssh.helper_session import HelperSession
from shipyard.runtime.ssh.options import SshTarget

CONCURRENCY = 100
"""Hosts asked at once: one channel each on connections that are already open."""


@dataclass
class HostTiming:
    seconds: float
    """Request sent to answer read, on the controller."""
    helper_seconds: float | None
    """Time the helper spent on the host (None: no answer)."""


class SshDriftScan:
    def __init__(self, connections: SshConnections | None, targets: Iterable[SshTarget] = (), *,
                 root: str | None = None, python: str = "python3", helper: tuple[str, bytes] | None = None,
                 connect_wait: float = 5.0, metadata_timeout: float = 30.0, full_timeout: float = 600.0,
                 concurrency: int = CONCURRENCY) -> None:
        self._helper = helper or bundle.build()
        self._root, self._python = root, python
        self._hosts: dict[str, tuple[HostConnection, HelperSession]] = {}
        self._connect_wait = connect_wait
        self._timeouts = {"metadata": metadata_timeout, "full": full_timeout}
        self._concurrency = concurrency
        self.last_timings: dict[str, HostTiming] = {}
        """Per host name, of the last scan (what the benchmark reports)."""
        if targets:
            assert connections is not None, "targets need the connections that reach them"
            self.add_targets(connections, targets)

    def add_targets(self, connections: SshConnections, targets: Iterable[SshTarget]) -> None:
        """Scan ``targets`` through ``connections`` from now on (a fleet spec the engine has just
        met, as SshRuntime.add_targets). A host reached the same way keeps its scan helper; one
        now reached through another connection gets a new one (the old helper is ended)."""
        for t in targets:
            conn = connections.host(t)
            known = self._hosts.get(t.address)
            if known is not None and known[0] is conn:
                continue
            self._hosts[t.address] = (conn, HelperSession(
                conn, root=self._root, python=self._python, helper=self._helper,
                timeout=max(self._timeouts["metadata"], self._connect_wait)))
            if known is not None:
                asyncio.get_running_loop().create_task(known[1].close())

    async def _ask(self, host: FleetHost, args: dict[str, Any], mode: Mode) -> dict[str, Any] | str:
        entry = self._hosts.get(host.address)
        if entry is None:
            return f"{host.address} is not a host this scanner reaches (not in the fleet's inventory)"
        conn, session = entry
        began = time.perf_counter()
        try:
            await conn.wait_connected(self._connect_wait)
            client = await session.client()
            answer = await asyncio.wait_for(client.drift_scan(args), self._timeouts[mode])
        except TimeoutError:
            await session.close()   # the helper may be stuck on it: the next scan starts a fresh one
            return f"no answer within {self._timeouts[mode]:g}s ({mode} scan)"
        except ShipyardError as exc:   # SSH down, helper refused or gone: said as the host's
            return exc.message + (f" ({exc.hint})" if exc.hint else "")
        self.last_timings[host.name] = HostTiming(round(time.perf_counter() - began, 6), answer.get("seconds"))
        return answer

    async def scan(self, inputs: FleetInputs, mode: Mode = "metadata") -> DriftReport:
        """Every host of ``inputs`` scanned at once; a host that fails is an unknown finding."""
        began = time.perf_counter()
        self.last_timings = {}
        gate = asyncio.Semaphore(self._concurrency)

        async def one(host: FleetHost) -> tuple[str, dict[str, Any] | str]:
            async with gate:
                return host.name, await self._ask(host, host_request(inputs, host, mode), mode)

        answers = dict(await asyncio.gather(*(one(h) for h in inputs.hosts)))
        return fleet_report(inputs, mode, answers, seconds=round(time.perf_counter() - began, 6))

    async def quarantine(self, address: str, image_id: str) -> str | None:
        """Move the host's tree of ``image_id`` aside (kept as evidence; running instances keep
        their cwd), so the next instance started there gets a fresh tree from the object store:
        the heal of a content finding, whichever pass found it. Returns where it went (None:
        there was no tree)."""
        entry = self._hosts.get(address)
        if entry is None:
            raise RuntimeFailure(f"cannot quarantine image {image_id[:12]} on {address}: not a host of this fleet",
                                 hint="list the host under fleet.hosts (by this address) in the spec")
        conn, session = entry
        try:
            await conn.wait_connected(self._connect_wait)
            client = await session.client()
            return await asyncio.wait_for(client.quarantine(image_id), self._timeouts["metadata"])
        except TimeoutError:
            await session.close()
            raise RuntimeFailure(f"cannot quarantine image {image_id[:12]} on {conn.name}: no answer within "
                                 f"{self._timeouts['metadata']:g}s", hint="check the host; heal it later") from None
        except ShipyardError as exc:
            raise RuntimeFailure(f"cannot quarantine image {image_id[:12]} on {conn.name}: {exc.message}",
                                 hint=exc.hint) from None

    async def close(self) -> None:
        """End the scan helpers (the SSH connections belong to their pool)."""
        await asyncio.gather(*(s.close() for _, s in self._hosts.values()), return_exceptions=True)
