"""HAProxyRouter: the Router port served by one real HAProxy for every `kind: haproxy` service.

Traffic changes only through the Runtime API: `add server` / `enable server` for new
instances, `set server ... state maint` then `del server` for old ones (deleted once their
connections are gone: retried at every later change), and atomic map swaps for the bucket
ranges, the track/alias names and the preview token (config.py says which map does what).
A reload happens only when what the configuration holds changes: a service or listen
address added or removed, its sticky names, a track name beyond blue/green, the per-instance
limit or the queue timeout. Every change is also written to the map files, the saved table
and the server-state file, so a HAProxy restarted after a crash comes back with the last
state, and `apply` re-pushes it anyway. `apply` returns only after reading back the maps and
the servers from HAProxy itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.dataplane.metrics import TrackMetrics, UpstreamMetrics
from shipyard.router.haproxy import config as cfg
from shipyard.router.haproxy.config import Files, Server, ServiceConfig
from shipyard.router.haproxy.logs import LOG_FORMAT, START_RULE, TrafficLog
from shipyard.router.haproxy.process import HAProxyProcess, check_free
from shipyard.router.haproxy.saved import Saved
from shipyard.router.table import RoutingTable, Upstream

log = logging.getLogger("shipyard.router.haproxy")

READ_BACK_TRIES = 20


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
        self._lock = asyncio.Lock()
        """One change at a time: every service shares this HAProxy."""
        self._services: dict[str, str] = self.saved.services()
        """service -> listen, as the configuration holds them (persisted)."""
        self._tables: dict[str, RoutingTable] = {s: t for s in self._services if (t := self.saved.table(s))}
        self._pending: set[tuple[str, str]] = set()
        """(backend, server) put in maintenance whose deletion HAProxy refused (connections open)."""
        self._logs: dict[str, TrafficLog] = {}
        self._answered_before: dict[str, dict[str, int]] = {}
        """Per service, HAProxy's response counters when its log reader started (an adopted
        HAProxy answered requests no reader of ours saw)."""

    # -- Router port ------------------------------------------------------------------------

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None) -> dict[str, Any] | None:
        if kind not in (None, "haproxy"):
            raise RouterError(f"this router is HAProxy; {service} asks for router kind {kind!r}")
        if redirect_http is not None:   # the spec refuses tls with haproxy; never serve it half
            raise RouterError(f"{service}: TLS and its HTTP redirect are not implemented on the HAProxy router yet",
                              "use router kind embedded for a TLS listener")
        async with self._lock:
            want = normalize_listen(listen)
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
                if want not in before.values():
                    check_free(service, want)
                self._services[service] = want
                self.saved.save_services(self._services)
            try:
                await self._start_logs(running)
                text = self._render()
                if not running:
                    await self.proc.start(text)
                    self.saved.save_shape(self._shape_text())
                    for table in list(self._tables.values()):
                        await self._sync(table)
                elif self._shape_text() != self.saved.shape():
                    await self._dump_state()
                    await self.proc.reload(text)
                    self.saved.save_shape(self._shape_text())
            except RouterError:
                if self._services != before:   # never keep a service HAProxy could not take
                    self._services = before
                    self.saved.save_services(self._services)
                raise
            await self._sweep()
            return lost

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
        if table.tls is not None:
            raise RouterError(f"cannot apply table version {table.version}: it serves a TLS certificate, and "
                              "TLS is not implemented on the HAProxy router yet", "use router kind embedded for TLS")
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
            try:
                if self._shape_text() != self.saved.shape():
                    await self._reload_for(table)
                    previous = None          # a new worker: send it everything
                await self._sync(table, previous=previous)
                self.saved.save_table(table)     # what HAProxy serves now (written after: a rename costs ms)
            except RouterError as e:
                if previous is not None:
                    self._tables[table.service] = previous
                    self.saved.save_table(previous)
                raise RouterError(f"cannot apply table version {table.version} to HAProxy for "
                                  f"{table.service}: {e.message}", e.hint) from None
            await self._sweep()

    async def current(self, service: str) -> RoutingTable | None:
        if service not in self._services or not await self._running():
            raise RouterError(f"HAProxy for {service} is not running", "the daemon restarts it within a second")
        return self._tables.get(service)

    def pids(self, service: str) -> set[int]:
        return self.proc.pids() if service in self._services else set()

    async def stats(self, service: str) -> dict[str, Any]:
        """The embedded router's shape: the traffic log's counters, keyed and completed from
        the table (version, each track's release, instances by id with their address, limits)."""
        await self._log_caught_up(service)
        doc = self._traffic(service).stats()
        table = self._tables.get(service)
        if table is None:
            return {**doc, "version": 0, "limits": {}}
        tracks = {t: {**TrackMetrics().snapshot(), **doc["tracks"].get(t, {}), "release": table.releases.get(t, "")}
                  for t in {*table.tracks, *doc["tracks"]}}
        seen = doc["upstreams"]
        ups = {u.id: {**UpstreamMetrics().snapshot(), **seen.get(cfg.server_name(u), {}), "track": t,
                      "address": f"{u.host}:{u.port}"}
               for t, us in table.tracks.items() for u in us}
        return {**doc, "version": table.version, "tracks": tracks, "upstreams": ups,
                "limits": {k: getattr(table, k) for k in ("max_conns_per_instance", "queue_size", "queue_timeout",
                                                         "per_try_timeout")}}

    async def _log_caught_up(self, service: str) -> None:
        """Wait (at most 0.2 s) until the log has counted what HAProxy says it answered: the
        ring's forwarder streams lines a moment after their responses, and stats read right
        after a response must include it. (Series count a line at its receipt: never lost.)"""
        traffic = self._traffic(service)
        for _ in range(20):
            try:
                sent = await self.proc.api.backend_responses(f"{service}__")
            except RouterError:
                return
            tracks = traffic.stats()["tracks"]
            before = self._answered_before.get(service, {})
            if all(tracks.get(be.split("__", 1)[1], {}).get("requests", 0) >= n - before.get(be, 0)
                   for be, n in sent.items()):
                return
            await asyncio.sleep(0.01)

    async def series(self, service: str, since: float) -> dict[str, Any]:
        return self._traffic(service).series(since)

    async def stop(self, service: str) -> None:
        async with self._lock:
            if self._services.pop(service, None) is None:
                return
            self._tables.pop(service, None)
            self.saved.save_services(self._services)
            self.saved.forget(service)
            if not self._services:
                await self.proc.stop()
            elif await self._running():
                await self._dump_state()
                await self.proc.reload(self._render())
                self.saved.save_shape(self._shape_text())
            traffic = self._logs.pop(service, None)
            if traffic is not None:
                await traffic.close()

    async def close(self) -> None:
        """Stop reading the traffic logs; HAProxy itself keeps serving (the daemon is going away)."""
        for traffic in self._logs.values():
            await traffic.close()
        self._logs.clear()

    # -- syncing one table ---------------------------------------------------------------------

    async def _reload_for(self, table: RoutingTable) -> None:
        """A table whose configuration differs (sticky names, limits, a new track name): its
        servers and maps go to the running worker first, then the reload. The old worker keeps
        the connections it has (idle-close-on-response: each gets one more response, then
        `Connection: close`), so they too meet the new table, only with the old sticky names;
        what the old worker cannot take (a server of a backend it lacks) is left to the new one."""
        try:
            await self._sync(table, final=False)
        except RouterError as e:
            log.info("HAProxy worker before the reload keeps part of the old table: %s", e.message)
        await self._dump_state()
        await self.proc.reload(self._render())
        self.saved.save_shape(self._shape_text())

    async def _sync(self, table: RoutingTable, final: bool = True, previous: RoutingTable | None = None) -> None:
        """Make HAProxy serve `table`: servers first (new ones in rotation of their own track),
        then the maps (the bucket map, which moves users, last), then old servers out. `final`:
        read back and save the state; else a worker about to be replaced by a reload.
        `previous`: the table HAProxy was last made to serve. Only what differs from it is sent
        (a rollback: the same servers, one `set map` per changed map, not 9 map commands and a
        server listing before users move); should the read-back then differ, everything is sent."""
        api = self.proc.api
        s = table.service
        want = await self._servers(table)
        if previous is not None and previous.tracks == table.tracks:
            old = cfg.map_entries(previous)
            for kind, entries in cfg.map_entries(table).items():
                await self._push_map(s, kind, entries, old[kind])
            self.saved.maps(s, table)
            if not final:
                return
            if await self._read_back(table, want, tries=1):
                return                   # servers unchanged: the saved server state still holds
            log.info("HAProxy for %s differs from table version %d after the change: sending all of it", s,
                     previous.version)
        live = await self._server_states(s)
        for track, servers in want.items():
            backend = cfg.backend_name(s, track)
            for srv in servers:
                state = live.get(backend, {}).get(srv.name)
                if state is None:
                    await api.add_server(backend, srv.name, cfg.server_line(srv, table.max_conns_per_instance)
                                         .split(" ", 2)[2])
                elif state != "0":
                    await api.set_state(backend, srv.name, "ready")
                self._pending.discard((backend, srv.name))
        for kind, entries in cfg.map_entries(table).items():
            await self._push_map(s, kind, entries)
        self.saved.maps(s, table)            # for a restart; after the change (a file rename costs ms)
        for backend, servers in live.items():
            track = backend.split("__", 1)[1]
            keep = {srv.name for srv in want.get(track, ())}
            for name, state in servers.items():
                if name not in keep:
                    if state == "0":
                        await api.set_state(backend, name, "maint")
                    if final:
                        self._pending.add((backend, name))
        if final:
            if not await self._read_back(table, want):
                raise RouterError(f"HAProxy does not serve table version {table.version} after the change "
                                  f"(maps or servers differ when read back)", f"see {self.proc.log_path}")
            await self._dump_state()

    async def _push_map(self, service: str, kind: str, entries: list[tuple[str, str]],
                        old: list[tuple[str, str]] | None = None) -> None:
        """Make the map hold `entries`. With `old`, what it holds now: nothing is sent if they are
        equal, one `set map` (atomic for that entry) if the same distinct keys differ in one value,
        else the whole map is swapped (prepare, add, commit: atomic for the map)."""
        path = self.files.map_file(service, kind)
        if old is not None:
            if old == entries:
                return
            diff = [(k, v) for (k, v), was in zip(entries, old, strict=False) if (k, v) != was]
            keys = [k for k, _ in entries]
            if (len(diff) == 1 and keys == [k for k, _ in old] and len(set(keys)) == len(keys)
                    and not any(c.isspace() for c in "".join(diff[0]))):
                try:
                    await self.proc.api.change(f"set map {path} {diff[0][0]} {diff[0][1]}")
                    return
                except RouterError as e:     # not the entries we thought: swap the whole map
                    log.info("%s", e.message)
        await self.proc.api.replace_map(path, entries)

    async def _read_back(self, table: RoutingTable, want: dict[str, tuple[Server, ...]],
                         tries: int = READ_BACK_TRIES) -> bool:
        """What HAProxy says it serves must be the table: the maps and the servers in rotation."""
        api = self.proc.api
        expect = {k: sorted(v) for k, v in cfg.map_entries(table).items()}
        expect_servers = {cfg.backend_name(table.service, t): {srv.name for srv in ss} for t, ss in want.items() if ss}
        for attempt in range(tries):
            got = {k: sorted(await api.show_map(self.files.map_file(table.service, k))) for k in cfg.MAP_KINDS}
            live = await self._server_states(table.service)
            ready = {b: {n for n, st in ss.items() if st == "0"} for b, ss in live.items()}
            ready = {b: ns for b, ns in ready.items() if ns}
            if got == expect and ready == expect_servers:
                return True
            if attempt + 1 < tries:
                await asyncio.sleep(0.01)
        return False

    async def _server_states(self, service: str) -> dict[str, dict[str, str]]:
        """backend -> server -> srv_admin_state ("0": in rotation), for the service's backends."""
        out: dict[str, dict[str, str]] = {}
        for row in await self.proc.api.servers_state():
            be = row.get("be_name", "")
            if be.startswith(f"{service}__"):
                out.setdefault(be, {})[row.get("srv_name", "")] = row.get("srv_admin_state", "0")
        return out

    async def _sweep(self) -> None:
        """Delete the servers in maintenance whose connections are gone by now."""
        for backend, name in sorted(self._pending):
            try:
                if await self.proc.api.del_server(backend, name):
                    self._pending.discard((backend, name))
            except RouterError as e:
                if "No such server" in e.message or "No such backend" in e.message:
                    self._pending.discard((backend, name))
                else:
                    log.warning("%s", e.message)

    async def _servers(self, table: RoutingTable) -> dict[str, tuple[Server, ...]]:
        """Per track, its instances as servers (host names resolved: dynamic servers need addresses)."""
        out: dict[str, tuple[Server, ...]] = {}
        for track, ups in table.tracks.items():
            out[track] = tuple([Server(cfg.server_name(u), await _address(u), u.port) for u in ups])
        return out

    # -- configuration and files -------------------------------------------------------------

    def _configs(self, with_servers: bool = True) -> list[ServiceConfig]:
        out = []
        for s, listen in sorted(self._services.items()):
            table = self._tables.get(s)
            if table is None:
                out.append(ServiceConfig(s, listen))
                continue
            servers = ({t: tuple(Server(cfg.server_name(u), u.host, u.port) for u in ups)
                        for t, ups in table.tracks.items()} if with_servers else {})
            out.append(cfg.service_config(listen, table, servers))
        return out

    def _render(self) -> str:
        """The configuration now; every map file it names exists (empty for a service without a table)."""
        for svc in self._services:
            self.saved.maps(svc, self._tables.get(svc))
        return cfg.render(self._configs(), self.files, LOG_FORMAT, START_RULE)

    def _shape_text(self) -> str:
        return cfg.render(self._configs(with_servers=False), self.files, LOG_FORMAT, START_RULE)

    async def _dump_state(self) -> None:
        with contextlib.suppress(RouterError, OSError):
            self.saved.server_state(await self.proc.api.dump_servers_state())


    # -- process and metrics --------------------------------------------------------------------

    async def _running(self) -> bool:
        if self.proc.master_pid is None and not await self.proc.adopt():
            return False
        return not self.proc.exited() and await self.proc.answering()

    async def _start_logs(self, running: bool) -> None:
        """A reader per service on its log socket, before HAProxy is told to send there."""
        for s in self._services:
            if s not in self._logs:
                traffic = TrafficLog(s)
                await traffic.start_stream(self.files.log_socket(s))
                self._logs[s] = traffic
                self._answered_before[s] = {}
                if running:
                    with contextlib.suppress(RouterError):
                        self._answered_before[s] = await self.proc.api.backend_responses(f"{s}__")

    def _traffic(self, service: str) -> TrafficLog:
        traffic = self._logs.get(service)
        if traffic is None:
            raise RouterError(f"HAProxy does not serve {service}", "the daemon calls ensure first")
        return traffic


async def _address(up: Upstream) -> str:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in up.host else socket.AF_INET, up.host)
        return up.host
    except OSError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise RouterError(f"cannot resolve {up.host} of instance {up.id}: {e}") from None
    return str(infos[0][4][0])
