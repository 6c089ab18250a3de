"""HAProxyRouter: the Router port served by one real HAProxy for every `kind: haproxy` service.

Traffic changes only through the Runtime API: `add server` / `enable server` for new
instances, `set server ... state maint` then `del server` for old ones (deleted once their
connections are gone: retried at every later change), and atomic map swaps for the bucket
ranges, the track/alias names and the preview token (maps.py says which map does what);
a rotated certificate with `set ssl cert` + `commit ssl cert` (tls.py checks it first).
A reload happens only when what the configuration holds changes: a service or listen
address added or removed, its redirect listener, TLS turned on or off, its sticky names, a
track name beyond blue/green, the per-instance limit or the queue timeout. Every change is
also written to the map files, the saved table and the server-state file, so a HAProxy
restarted after a crash comes back with the last state, and `apply` re-pushes it anyway. `apply` returns only after reading back the maps,
the servers and the certificate from HAProxy itself. The daemon holds copies of HAProxy's
listening sockets and hands them to the HAProxy it restarts (sockets.py), so a crash refuses
no connection; stats take what is in flight, queued and out of rotation from `show stat`.

This module decides what changes and when (one change at a time, under a lock) and keeps the
services, tables and configuration; sync.py sends a table to HAProxy and reads it back;
readers.py keeps the traffic log readers; process.py runs HAProxy; config.py, rules.py and sites.py
write its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.dataplane.metrics import TrackMetrics, UpstreamMetrics
from shipyard.router.haproxy import live, sites
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.log_lines import LOG_FORMAT, START_RULE
from shipyard.router.haproxy.process import HAProxyProcess, check_free
from shipyard.router.haproxy.readers import Readers
from shipyard.router.haproxy.saved import Saved
from shipyard.router.haproxy.services import Edge, Server, ServiceConfig, server_name, service_config
from shipyard.router.haproxy.sockets import Listeners, offer, take_copies
from shipyard.router.haproxy.sync import Sync
from shipyard.router.haproxy.tls import Certificates
from shipyard.router.table import RoutingTable

log = logging.getLogger("shipyard.router.haproxy")


def normalize_listen(listen: str) -> str:
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise RouterError(f"listen address {listen!r} is not HOST:PORT",
                          hint="write it like 127.0.0.1:8080 in the spec's `listen`")
    return f"{host}:{int(port)}"


class HAProxyRouter:
    """Implements engine.ports.Router with HAProxy; its files live under `root`."""

    def __init__(self, root: Path, binary: str | None = None) -> None:
        self.files = Files(root)
        self.proc = HAProxyProcess(self.files, binary)
        self.saved = Saved(self.files)
        self.listeners = Listeners()
        """The daemon's copies of HAProxy's listening sockets (sockets.py)."""
        self._lock = asyncio.Lock()
        """One change at a time: every service shares this HAProxy."""
        self._services: dict[str, Edge] = self.saved.services()
        """service -> its listen (and redirect) address, as the configuration holds them (persisted)."""
        self._tables: dict[str, RoutingTable] = {s: t for s in self._services if (t := self.saved.table(s))}
        self.readers = Readers(self.proc, self.files)
        """Per site (a service's own frontend, or a shared listen's: sites.py), its log reader."""
        self._certs = Certificates()
        self.sync = Sync(self.proc, self.files, self.saved, self._certs)
        """The Runtime API commands that make HAProxy serve a table (sync.py)."""
        self._untold: dict[str, dict[str, Any]] = {}
        """Services a replaced HAProxy also served, with what became of it: each one's next
        `ensure` returns it once, so every service records the crash, not only the first."""

    # -- Router port ------------------------------------------------------------------------

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None, domains: Sequence[str] = ()) -> dict[str, Any] | None:
        if kind not in (None, "haproxy"):
            raise RouterError(f"this router is HAProxy; {service} asks for router kind {kind!r}")
        want = Edge(normalize_listen(listen), normalize_listen(redirect_http) if redirect_http else None,
                    tuple(sorted({d.strip().lower() for d in domains})))
        if want.redirect_http == want.listen:
            raise RouterError(f"{service}: tls.redirect_http {redirect_http} is the listen address",
                              "give the plain-HTTP listener its own port (e.g. 80 beside 443)")
        async with self._lock:
            known = service in self._services
            lost = None
            running = await self._running()
            if not running:
                if self.proc.master_pid is not None:
                    lost = self.proc.how_it_ended() if known else None
                    self.proc.kill()
                    self.proc.master_pid = None
                elif known:
                    lost = self._lost_before()
            before = dict(self._services)
            if before.get(service) != want:
                ours = {a for e in before.values() for a in (e.listen, e.redirect_http) if a}
                for address in (want.listen, want.redirect_http):
                    if address and address not in ours and not self.listeners.holds([address]):
                        check_free(service, address)
                self._services[service] = want
                self.saved.save_services(self._services)
            try:
                self._render()          # the map files (host maps too) as the services now are
                await self.readers.start(self._services, running)
                if not running:
                    await self._start()
                    for table in list(self._tables.values()):
                        await self.sync.table(table)
                else:
                    await self._hold_listeners()
                    if self._shape_text() != self.saved.shape():
                        await self.sync.dump_state()
                        await self.proc.reload(self._render())
                        self.saved.save_shape(self._shape_text())
                        self.listeners.release(keep=self._addresses())   # an address given up: refused
                        await self._hold_listeners()
                    elif before.get(service) != want:
                        await self.sync.hosts(self._configs(with_servers=False))     # a change of domains only: the host maps
            except RouterError:
                if self._services != before:   # never keep a service HAProxy could not take
                    self._services = before
                    self.saved.save_services(self._services)
                    with contextlib.suppress(RouterError):
                        self._render()
                raise
            finally:
                await self.readers.prune(self._services)
            await self.sync.sweep()
            if lost is not None:
                self._untold.update({s: lost for s in before if s != service})
                self._untold.pop(service, None)
                return lost
            return self._untold.pop(service, None)

    def _lost_before(self) -> dict[str, Any] | None:
        """What became of a HAProxy an earlier daemon started that is gone now (its pid file)."""
        try:
            pid = int(self.files.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return {"pid": pid, "exit_code": None, "signal": None,
                "reason": "it is gone (started by an earlier daemon: its exit status is unknown)"}

    def exited(self, service: str) -> bool:
        return service in self._services and self.proc.master_pid is not None and self.proc.exited()

    async def apply(self, table: RoutingTable) -> None:
        pem = await self._certs.check(table, self._tables.get(table.service))
        async with self._lock:
            if table.service not in self._services:
                raise RouterError(f"cannot apply table version {table.version}: HAProxy does not serve "
                                  f"{table.service} yet", "the daemon calls ensure first; this is a bug")
            if not await self._running():
                raise RouterError(f"cannot apply table version {table.version} to HAProxy for {table.service}: "
                                  "it is not running", "the daemon restarts it within a second")
            previous = self._tables.get(table.service)
            if previous is not None and table.version < previous.version:
                raise RouterError(f"cannot apply table version {table.version} to HAProxy for {table.service}: "
                                  f"stale table: version {table.version} is older than the served version "
                                  f"{previous.version}")
            self._tables[table.service] = table
            old_pem = self._certs.pems.get(table.service)
            self._certs.put(table.service, pem)
            try:
                if self._shape_text() != self.saved.shape():
                    await self._reload_for(table)
                    previous = None          # a new worker: send it everything
                await self.sync.table(table, previous=previous)
                self.saved.save_table(table)     # what HAProxy serves now (written after: a rename costs ms)
            except RouterError as e:
                if previous is not None:
                    self._tables[table.service] = previous
                    self.saved.save_table(previous)
                else:
                    self._tables.pop(table.service, None)
                    with contextlib.suppress(OSError):
                        self.saved.table_path(table.service).unlink()
                self._certs.put(table.service, old_pem)
                self.saved.cert(table.service, old_pem.text if old_pem else None)
                raise RouterError(f"cannot apply table version {table.version} to HAProxy for "
                                  f"{table.service}: {e.message}", e.hint) from None
            self._certs.count(previous, table)
            await self.sync.sweep()

    async def current(self, service: str) -> RoutingTable | None:
        if service not in self._services or not await self._running():
            raise RouterError(f"HAProxy for {service} is not running", "the daemon restarts it within a second")
        return self._tables.get(service)

    def pids(self, service: str) -> set[int]:
        return self.proc.pids() if service in self._services else set()

    async def stats(self, service: str) -> dict[str, Any]:
        """The embedded router's shape: the traffic log's counters, keyed and completed from
        the table (version, each track's release, instances by id with their address, limits)."""
        await self.readers.caught_up(service, self._services)
        doc = self.readers.of(service, self._services).stats(service)
        doc.update(self._listener(service, doc))
        table = self._tables.get(service)
        if table is None:
            return {**doc, "version": 0, "limits": {}, "tls": None}
        tracks = {t: {**TrackMetrics().snapshot(), **doc["tracks"].get(t, {}), "release": table.releases.get(t, "")}
                  for t in {*table.tracks, *doc["tracks"]}}
        seen = doc["upstreams"]
        ups = {u.id: {**UpstreamMetrics().snapshot(), **seen.get(server_name(u), {}), "track": t,
                      "address": f"{u.host}:{u.port}"}
               for t, us in table.tracks.items() for u in us}
        await self._live_counts(table, tracks, ups)
        return {**doc, "version": table.version, "tracks": tracks, "upstreams": ups,
                "limits": {k: getattr(table, k) for k in ("max_conns_per_instance", "queue_size", "queue_timeout",
                                                         "per_try_timeout")},
                "tls": {"fingerprint": table.tls.fingerprint, "rotations": self._certs.rotations.get(service, 0),
                        "redirect_http": self._services[service].redirect_http} if table.tls else None}

    def _listener(self, service: str, doc: dict[str, Any]) -> dict[str, Any]:
        """What the embedded router's stats say of the service's listen address (`listener`: the
        services on it and the 404s for a host none of them names, from a shared frontend's log)."""
        listen = self._services[service].listen
        return {"listener": {"listen": listen, "services": sorted(s for s, e in self._services.items()
                                                                  if e.listen == listen),
                             "unknown_host": doc.pop("unknown_host")}}

    async def _live_counts(self, table: RoutingTable, tracks: dict[str, dict[str, Any]],
                           ups: dict[str, dict[str, Any]]) -> None:
        """In flight, queued, out of rotation: from `show stat` (live.py); left at 0 when
        HAProxy does not answer."""
        try:
            rows = await self.proc.api.stat_rows(f"{table.service}__")
        except RouterError:
            return
        live.fill(table, rows, tracks, ups)

    async def series(self, service: str, since: float) -> dict[str, Any]:
        return self.readers.of(service, self._services).series(since, service)

    async def stop(self, service: str) -> None:
        async with self._lock:
            if self._services.pop(service, None) is None:
                return
            self._tables.pop(service, None)
            self._untold.pop(service, None)
            self._certs.forget(service)
            self.saved.save_services(self._services)
            self.saved.forget(service)
            if not self._services:
                await self.proc.stop()
                self.listeners.release(keep=())
            elif await self._running():
                await self.sync.dump_state()
                await self.proc.reload(self._render())
                self.saved.save_shape(self._shape_text())
                self.listeners.release(keep=self._addresses())
            await self.readers.prune(self._services)

    async def close(self) -> None:
        """Stop reading the traffic logs; HAProxy itself keeps serving (the daemon is going away)."""
        self.listeners.close()
        await self.readers.close()

    # -- syncing one table ---------------------------------------------------------------------

    async def _reload_for(self, table: RoutingTable) -> None:
        """A table whose configuration differs (sticky names, limits, a new track name): its
        servers and maps go to the running worker first, then the reload. The old worker keeps
        the connections it has (idle-close-on-response: each gets one more response, then
        `Connection: close`), so they too meet the new table, only with the old sticky names;
        what the old worker cannot take (a server of a backend it lacks) is left to the new one."""
        try:
            await self.sync.table(table, final=False)
        except RouterError as e:
            log.info("HAProxy worker before the reload keeps part of the old table: %s", e.message)
        await self.sync.dump_state()
        await self.proc.reload(self._render())
        self.saved.save_shape(self._shape_text())

    # -- configuration and files -------------------------------------------------------------

    def _configs(self, with_servers: bool = True) -> list[ServiceConfig]:
        out = []
        for s, edge in sorted(self._services.items()):
            table = self._tables.get(s)
            if table is None:
                out.append(ServiceConfig(s, edge.listen, redirect_http=edge.redirect_http, domains=edge.domains))
                continue
            servers = ({t: tuple(Server(server_name(u), u.host, u.port) for u in ups)
                        for t, ups in table.tracks.items()} if with_servers else {})
            out.append(service_config(edge.listen, table, servers, edge.redirect_http, edge.domains))
        return out

    def _render(self) -> str:
        """The configuration now; every map file it names exists (empty for a service without a table)."""
        for svc in self._services:
            table = self._tables.get(svc)
            self.saved.maps(svc, table)
            pem = self._certs.of(table) if table is not None else None
            if pem is not None:
                self.saved.cert(svc, pem.text)
        configs = self._configs()
        for site, svcs in sites.group(configs).items():
            if svcs[0].domains:
                for kind, rows in sites.host_entries(svcs).items():
                    self.saved.write_map(self.files.map_file(site, kind), rows)
        return sites.render(configs, self.files, LOG_FORMAT, START_RULE)

    async def _start(self) -> None:
        """A new HAProxy, given the daemon's copies of the listening sockets the last one had
        (`-x`), so connections wait in their backlog, never refused, while it starts."""
        self.listeners.release(keep=self._addresses())
        async with offer(self.files.root / "listeners.sock", self.listeners.sockets()) as path:
            await self.proc.start(self._render(), sockets_from=path)
        self.saved.save_shape(self._shape_text())
        await self._hold_listeners()

    async def _hold_listeners(self) -> None:
        """Copies of the running HAProxy's listening sockets for the addresses the daemon does
        not hold (HAProxy started by an earlier daemon, or an address a reload added)."""
        if self.listeners.holds(self._addresses()):
            return
        try:
            copies = await take_copies(self.files.admin_socket)
        except RouterError as e:
            log.warning("%s", e.message)
            return
        got = self.listeners.take(copies)
        if got:
            log.info("took over the listening socket(s) of HAProxy: %s",
                     ", ".join(f"{host}:{port}" for _f, host, port in got))

    def _addresses(self) -> list[str]:
        """Every address HAProxy listens on for the services: each listen and redirect listener."""
        return sorted({a for e in self._services.values() for a in (e.listen, e.redirect_http) if a})

    def _shape_text(self) -> str:
        return sites.render(self._configs(with_servers=False), self.files, LOG_FORMAT, START_RULE)

    # -- process and metrics --------------------------------------------------------------------

    async def _running(self) -> bool:
        if self.proc.master_pid is None and not await self.proc.adopt():
            return False
        return not self.proc.exited() and await self.proc.answering()
