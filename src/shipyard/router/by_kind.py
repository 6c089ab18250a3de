"""The Router port over several data planes: each service is served by the kind its spec's
`router.kind` names (embedded or haproxy), and every later call goes to that one.

The engine names the kind only when it deploys (`ensure(service, listen, kind)`); the
supervisor's repairs and the daemon's restart pass none and get the kind the service had,
remembered in a small file so a new daemon routes each service as the last one did. A
service moved to another kind is stopped on the old data plane first (both cannot listen on
one address): its clients see the port refuse connections until the new one listens.
`domains` (several services on one address, routed by Host) go to the kind that serves it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.fsutil import write_atomic
from shipyard.router.table import RoutingTable

DEFAULT_KIND = "embedded"


class RouterByKind:
    def __init__(self, routers: Mapping[str, Any], memory: Path, default: str = DEFAULT_KIND) -> None:
        if default not in routers:
            raise ValueError(f"default router kind {default!r} is not among {sorted(routers)}")
        self.routers = dict(routers)
        self.default = default
        self.memory = memory
        self._kinds: dict[str, str] = self._load()

    def kind_of(self, service: str) -> str:
        return self._kinds.get(service, self.default)

    def _of(self, service: str) -> Any:
        return self.routers[self.kind_of(service)]

    # -- Router port ------------------------------------------------------------------------

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None, domains: Sequence[str] = (),
                     workers: int | None = None) -> dict[str, Any] | None:
        want = kind or self.kind_of(service)
        if want not in self.routers:
            raise RouterError(f"unknown router kind {want!r} for {service}",
                              f"use one of: {', '.join(sorted(self.routers))}")
        was = self._kinds.get(service)
        if was is not None and was != want:
            await self.routers[was].stop(service)
        if was != want:
            self._kinds[service] = want
            self._save()
        # domains only when there are some: a data plane that predates them keeps working for the rest
        more: dict[str, Any] = {"domains": tuple(domains)} if domains else {}
        if workers is not None and (workers != 1 or want == "embedded"):    # only embedded has workers
            more["workers"] = workers
        return await self.routers[want].ensure(service, listen, redirect_http=redirect_http, **more)

    def exited(self, service: str) -> bool:
        return bool(self._of(service).exited(service))

    async def apply(self, table: RoutingTable) -> None:
        await self._of(table.service).apply(table)

    async def current(self, service: str) -> RoutingTable | None:
        return await self._of(service).current(service)

    def pids(self, service: str) -> set[int]:
        return set(self._of(service).pids(service))

    async def stats(self, service: str) -> dict[str, Any]:
        return dict(await self._of(service).stats(service))

    async def series(self, service: str, since: float) -> dict[str, Any]:
        return dict(await self._of(service).series(service, since))

    async def stop(self, service: str) -> None:
        await self._of(service).stop(service)
        if self._kinds.pop(service, None) is not None:
            self._save()

    # -- memory -----------------------------------------------------------------------------

    def _load(self) -> dict[str, str]:
        try:
            doc = json.loads(self.memory.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in doc.items() if str(v) in self.routers} if isinstance(doc, dict) else {}

    def _save(self) -> None:
        try:
            write_atomic(self.memory, json.dumps(self._kinds, sort_keys=True))
        except OSError as e:
            raise RouterError(f"cannot write {self.memory}: {e.strerror or e}",
                              f"free space in {self.memory.parent}") from None
