"""Routers of one service from before shared addresses (their own `<service>.sock`, a ping
without "services"): adopted as they are while nothing asks more of them, replaced by a
router of the address (their sockets taken over first) once their service names domains.
A part of EmbeddedRouter, kept apart because it only matters across an upgrade."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import RouterError
from shipyard.router.control_client import RouterControlClient
from shipyard.router.dataplane.control_hosts import load_services, save_services
from shipyard.router.embedded_process import ListenFiles, live_router, shut_down, write_pid
from shipyard.router.listeners import normalize_listen

log = logging.getLogger("shipyard.router")


class LegacyRouters:
    """Mixed into EmbeddedRouter, whose state and helpers it uses."""

    _children: dict[int, subprocess.Popen[bytes]]
    _serving: dict[str, int]
    _started: dict[str, subprocess.Popen[bytes]]
    _where: dict[str, str]
    _legacy: set[str]
    _sockets: dict[str, Any]
    _redirect_sockets: dict[str, Any]

    if TYPE_CHECKING:   # EmbeddedRouter's and HeldSockets' (stubs here would shadow them)
        def _socket(self, service: str) -> Path: ...
        def pid_file(self, service: str) -> Path: ...
        def _files_of(self, listen: str) -> ListenFiles: ...
        def _close_listen(self, listen: str, redirect: bool = False) -> None: ...
        def _unbind(self, service: str) -> None: ...
        async def _take_over_sockets(self, client: RouterControlClient, address: str, pid: int,
                                     listen: str | None = None) -> None: ...

    def _is_legacy_socket(self, service: str) -> bool:
        with contextlib.suppress(OSError):
            return stat.S_ISSOCK(os.lstat(self._socket(service)).st_mode)
        return False

    async def _legacy_router(self, service: str) -> dict[str, Any] | None:
        if not self._is_legacy_socket(service):
            return None
        try:
            info = await RouterControlClient(self._socket(service)).ping()
        except RouterError:
            return None
        return info if info.get("service") == service and "services" not in info else None

    async def _keep_legacy(self, service: str, want: str, redirect: str | None, domains: tuple[str, ...],
                           info: dict[str, Any]) -> bool:
        """Adopt a router of one service as it is when nothing asks more of it (True); else
        take its sockets over and shut it down (False), for a router of the address to replace it."""
        served = normalize_listen(str(info["redirect"])) if info.get("redirect") else None
        pid = int(info["pid"])
        client = RouterControlClient(self._socket(service))
        alone = not any(s != service for s in load_services(self._files_of(want).services))
        if normalize_listen(str(info.get("listen"))) == want and served == redirect and not domains and alone:
            write_pid(self.pid_file(service), pid, want)
            self._serving[want] = pid
            self._where[service] = want
            self._legacy.add(service)
            if want not in self._sockets:
                await self._take_over_sockets(client, want, pid)
            if redirect and want not in self._redirect_sockets:
                await self._take_over_sockets(client, redirect, pid, listen=want)
            return True
        log.info("replacing the router of %s alone (pid %d) by a router of the address %s", service, pid, want)
        if normalize_listen(str(info.get("listen"))) == want and want not in self._sockets:
            await self._take_over_sockets(client, want, pid)
        await shut_down(self._children, client, self.pid_file(service), self._socket(service))
        self._legacy.discard(service)
        self._remove_legacy_files(service)
        return False

    async def _stop_legacy(self, service: str, listen: str | None, keep_listen: bool) -> None:
        if listen is not None and not keep_listen:
            self._close_listen(listen)
        if listen is not None:
            self._close_listen(listen, redirect=True)
        if self._is_legacy_socket(service) or live_router(self.pid_file(service), self._socket(service)):
            await shut_down(self._children, RouterControlClient(self._socket(service)), self.pid_file(service),
                            self._socket(service))
        if listen is not None:
            self._serving.pop(listen, None)
            self._started.pop(listen, None)
            services = self._files_of(listen).services
            entries = load_services(services)
            if entries.pop(service, None) is not None:
                with contextlib.suppress(OSError):
                    save_services(services, entries)
        self._unbind(service)

    def _remove_legacy_files(self, service: str) -> None:
        for path in (self.pid_file(service), self._socket(service)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

