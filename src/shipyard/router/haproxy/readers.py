"""The daemon's readers of HAProxy's traffic logs: one per site (a service's own frontend, or a
listen address shared by Host: sites.py), each on the socket its frontend's ring streams to
(logs.py). Kept apart from the adapter because which reader counts which service, and what an
adopted HAProxy had answered before any reader of ours listened, is its own bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from shipyard.errors import RouterError
from shipyard.router.haproxy import sites
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.logs import TrafficLog
from shipyard.router.haproxy.process import HAProxyProcess
from shipyard.router.haproxy.services import Edge

CATCH_UP_TRIES = 20
CATCH_UP_PAUSE = 0.01


def site_of(service: str, edge: Edge) -> str:
    """The frontend (and log) that serves `service`: its own, or its shared listen's."""
    return sites.shared_name(edge.listen) if edge.domains else service


class Readers:
    """site -> its TrafficLog, for the services the adapter serves."""

    def __init__(self, proc: HAProxyProcess, files: Files) -> None:
        self.proc, self.files = proc, files
        self.logs: dict[str, TrafficLog] = {}
        self.answered_before: dict[str, dict[str, int]] = {}
        """Per service, HAProxy's response counters when its log reader started (an adopted
        HAProxy answered requests no reader of ours saw)."""

    async def start(self, services: Mapping[str, Edge], running: bool) -> None:
        """A reader per site on its log socket, before HAProxy is told to send there (a shared
        frontend's reader counts each line under the service its backend names)."""
        for s, edge in services.items():
            site = site_of(s, edge)
            if site not in self.logs:
                traffic = TrafficLog(None if edge.domains else s)
                await traffic.start_stream(self.files.log_socket(site))
                self.logs[site] = traffic
                self.answered_before.pop(s, None)
            if s not in self.answered_before:
                self.answered_before[s] = {}
                if running:
                    with contextlib.suppress(RouterError):
                        self.answered_before[s] = await self.proc.api.backend_responses(f"{s}__")

    async def prune(self, services: Mapping[str, Edge]) -> None:
        """Close the readers of sites no service uses any more."""
        used = {site_of(s, e) for s, e in services.items()}
        for site in [k for k in self.logs if k not in used]:
            await self.logs.pop(site).close()
        for s in [k for k in self.answered_before if k not in services]:
            del self.answered_before[s]

    def of(self, service: str, services: Mapping[str, Edge]) -> TrafficLog:
        edge = services.get(service)
        traffic = self.logs.get(site_of(service, edge)) if edge is not None else None
        if traffic is None:
            raise RouterError(f"HAProxy does not serve {service}", "the daemon calls ensure first")
        return traffic

    async def caught_up(self, service: str, services: Mapping[str, Edge]) -> None:
        """Wait (at most 0.2 s) until the log has counted what HAProxy says it answered: the
        ring's forwarder streams lines a moment after their responses, and stats read right
        after a response must include it. (Series count a line at its receipt: never lost.)"""
        traffic = self.of(service, services)
        for _ in range(CATCH_UP_TRIES):
            try:
                sent = await self.proc.api.backend_responses(f"{service}__")
            except RouterError:
                return
            tracks = traffic.stats(service)["tracks"]
            before = self.answered_before.get(service, {})
            if all(tracks.get(be.split("__", 1)[1], {}).get("requests", 0) >= n - before.get(be, 0)
                   for be, n in sent.items()):
                return
            await asyncio.sleep(CATCH_UP_PAUSE)

    async def close(self) -> None:
        for traffic in self.logs.values():
            await traffic.close()
        self.logs.clear()
