"""The control socket of a router serving several services on one address: which services it
serves (with their domains), and every per-service op routed to its service.

A request names its service (`"service": "shop"`); one that names none goes to the only
service, when there is one (a client from before shared addresses). `serve` adds a service
or changes its domains, `forget` removes one; both are persisted (services file, atomically)
before the reply, so a router restarted after a crash serves the same services, each with
its own persisted table. The per-service ops (set_table, get_table, stats, series) are
control_server.ControlService's, on that service's plane and table file."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from shipyard.router.dataplane.control_server import ControlService, load_table, write_durably
from shipyard.router.dataplane.service_plane import ServicePlane
from shipyard.router.table import RoutingTable, TableError
from shipyard.router.wire import error_reply as _error

log = logging.getLogger("shipyard.router")

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
_DOMAIN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
SERVICE_OPS = ("set_table", "get_table", "stats", "series")
RETIRE_GRACE = 2.0
"""Seconds a retired worker answers with `Connection: close` before it closes idle connections."""


class Listening(Protocol):
    """What the control service needs from the listener (proxy_server.ProxyServer)."""

    listen: str
    redirect: str | None
    planes: dict[str, ServicePlane]
    retire_grace: float

    def add(self, service: str, domains: list[str], table: RoutingTable | None) -> ServicePlane: ...

    def remove(self, service: str) -> None: ...

    def refusal(self, service: str, domains: list[str]) -> str | None: ...

    def stats(self) -> dict[str, Any]: ...

    def listen_fds(self) -> list[int]: ...

    def share(self, workers: int) -> None: ...

    def stop_accepting(self, inodes: set[int]) -> int: ...


def load_services(path: Path) -> dict[str, dict[str, Any]]:
    """service -> {"domains": [...], "table": path}: what the router served last ({} if none)."""
    try:
        doc = json.loads(path.read_bytes())
        entries = doc["services"]
        return {str(name): {"domains": [str(d) for d in e["domains"]], "table": str(e["table"])}
                for name, e in entries.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.error("services file %s cannot be read (%s); serving no service until told", path, e)
        return {}


def save_services(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Durably (a crash leaves the old or the new list)."""
    write_durably(path, json.dumps({"services": entries}, indent=1, sort_keys=True).encode())


class ListenControl(ControlService):
    """The ops of a listener's control socket (the framing and fd hand-over are inherited)."""

    def __init__(self, listener: Listening, services_path: Path, on_shutdown: Callable[[], None]) -> None:
        super().__init__(listener, services_path, on_shutdown)  # type: ignore[arg-type]
        self.listener = listener
        self.services_path = services_path
        self.entries = {name: e for name, e in load_services(services_path).items() if name in listener.planes}

    def handle(self, request: Any) -> tuple[dict[str, Any], bool]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _error('a request is a JSON object with an "op" field'), False
        op = request["op"]
        if op == "ping":
            return self._ping(), False
        if op == "serve":
            return self._serve(request), False
        if op == "forget":
            return self._forget(request.get("service")), False
        if op in SERVICE_OPS:
            plane = self._plane(request.get("service"))
            if isinstance(plane, dict):
                return plane, False
            table_path = Path(self.entries[plane.service]["table"])
            reply, _ = ControlService(plane, table_path, lambda: None).handle(request)
            if op == "stats" and reply.get("ok"):
                reply["stats"]["listener"] = self.listener.stats()
            return reply, False
        if op == "workers":
            return self._workers(request.get("workers")), False
        if op == "drop_listen":
            inodes = request.get("inodes")
            if not isinstance(inodes, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                       for i in inodes):
                return _error(f"drop_listen needs inodes, a list of numbers, got {inodes!r}"), False
            return {"ok": True, "dropped": self.listener.stop_accepting(set(inodes))}, False
        if op == "shutdown":
            return {"ok": True}, True
        if op == "retire":      # a worker the address no longer needs: its clients move first
            self.listener.retire_grace = RETIRE_GRACE
            return {"ok": True}, True
        if op in ("listen_fds", "take_listen"):
            return _error(f"{op} needs the control socket (the fds travel apart from the line)"), False
        return _error(f"unknown op {op!r} (expected ping, serve, forget, set_table, get_table, stats, series, "
                      "workers, listen_fds, take_listen, drop_listen, retire or shutdown)"), False

    def _workers(self, workers: Any) -> dict[str, Any]:
        """Enforce 1/`workers` of every limit (the daemon changed the address's worker count)."""
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            return _error(f"workers needs a number of workers 1..64, got {workers!r}")
        self.listener.share(workers)
        return {"ok": True, "workers": workers}

    def _ping(self) -> dict[str, Any]:
        planes = self.listener.planes
        reply = {"ok": True, "pid": os.getpid(), "listen": self.listener.listen, "redirect": self.listener.redirect,
                 "workers": getattr(self.listener, "workers", 1),
                 "services": {name: {"domains": list(p.domains), "version": p.table.version}
                              for name, p in sorted(planes.items())}}
        if len(planes) == 1:    # what a router for one service answered before shared addresses
            (name, plane), = planes.items()
            reply.update(service=name, version=plane.table.version)
        return reply

    def _plane(self, service: Any) -> ServicePlane | dict[str, Any]:
        planes = self.listener.planes
        if service is None:
            if len(planes) == 1:
                return next(iter(planes.values()))
            return _error(f"name the service: this router serves {', '.join(sorted(planes)) or 'none yet'}")
        plane = planes.get(service) if isinstance(service, str) else None
        if plane is None:
            return _error(f"this router does not serve {service!r} (it serves "
                          f"{', '.join(sorted(planes)) or 'none yet'}); `serve` it first")
        return plane

    def _serve(self, request: dict[str, Any]) -> dict[str, Any]:
        service, domains, table_path = request.get("service"), request.get("domains", []), request.get("table")
        if not isinstance(service, str) or not _NAME.fullmatch(service):
            return _error(f"serve needs a service name, got {service!r}")
        if not isinstance(domains, list) or not all(isinstance(d, str) and _DOMAIN.fullmatch(d) for d in domains):
            return _error(f"serve needs domains as a list of lowercase host names, got {domains!r}")
        if not isinstance(table_path, str) or not os.path.isabs(table_path):
            return _error(f"serve needs the absolute path of the service's table file, got {table_path!r}")
        problem = self.listener.refusal(service, domains)
        if problem is not None:
            return _error(f"cannot serve {service}: {problem}")
        before = dict(self.entries)
        self.entries[service] = {"domains": list(domains), "table": table_path}
        try:
            save_services(self.services_path, self.entries)
        except OSError as e:
            self.entries = before
            return _error(f"cannot persist the services to {self.services_path}: {e.strerror or e}")
        fresh = service not in self.listener.planes
        try:
            self.listener.add(service, domains, load_table(Path(table_path), service) if fresh else None)
        except TableError as e:   # its persisted certificate cannot be served: start it without a table
            log.error("the persisted table of %s cannot be served (%s); starting it without one", service, e)
            self.listener.add(service, domains, None)
        return {"ok": True, "service": service, "domains": list(domains)}

    def _forget(self, service: Any) -> dict[str, Any]:
        if not isinstance(service, str) or service not in self.listener.planes:
            return {"ok": True, "forgotten": False}
        before = dict(self.entries)
        self.entries.pop(service, None)
        try:
            save_services(self.services_path, self.entries)
        except OSError as e:
            self.entries = before
            return _error(f"cannot persist the services to {self.services_path}: {e.strerror or e}")
        self.listener.remove(service)
        return {"ok": True, "forgotten": True, "left": sorted(self.listener.planes)}
