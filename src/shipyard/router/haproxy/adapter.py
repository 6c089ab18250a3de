"""HAProxyRouter: the Router port served by one real HAProxy for every `kind: haproxy` service.

Traffic changes only through the Runtime API: `add server` / `enable server` for new
instances, `set server ... state maint` then `del server` for old ones (deleted once their
connections are gone: retried at every later change), and atomic map swaps for the bucket
ranges, the track/alias names and the preview token (config.py says which map does what);
a rotated certificate with `set ssl cert` + `commit ssl cert` (tls.py checks it first).
A reload happens only when what the configuration holds changes: a service or listen
address added or removed, its redirect listener, TLS turned on or off, its sticky names, a
track name beyond blue/green, the per-instance limit or the queue timeout. Every change is also written to the map files, the saved table
and the server-state file, so a HAProxy restarted after a crash comes back with the last
state, and `apply` re-pushes it anyway. `apply` returns only after reading back the maps,
the servers and the certificate from HAProxy itself. The daemon holds copies of HAProxy's
listening sockets and hands them to the HAProxy it restarts (sockets.py), so a crash refuses
no connection; stats take what is in flight, queued and out of rotation from `show stat`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.dataplane.metrics import TrackMetrics, UpstreamMetrics
from shipyard.router.haproxy import config as cfg
from shipyard.router.haproxy import live, sites
from shipyard.router.haproxy.config import Edge, Files, Server, ServiceConfig
from shipyard.router.haproxy.logs import LOG_FORMAT, START_RULE, TrafficLog
from shipyard.router.haproxy.process import HAProxyProcess, check_free
from shipyard.router.haproxy.saved import Saved
from shipyard.router.haproxy.sockets import Listeners, offer, take_copies
from shipyard.router.haproxy.tls import Certificates
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
        self.listeners = Listeners()
        """The daemon's copies of HAProxy's listening sockets (sockets.py)."""
        self._lock = asyncio.Lock()
        """One change at a time: every service shares this HAProxy."""
        self._services: dict[str, Edge] = self.saved.services()
        """service -> its listen (and redirect) address, as the configuration holds them (persisted)."""
        self._tables: dict[str, RoutingTable] = {s: t for s in self._services if (t := self.saved.table(s))}
        self._pending: set[tuple[str, str]] = set()
        """(backend, server) put in maintenance whose deletion HAProxy refused (connections open)."""
        self._logs: dict[str, TrafficLog] = {}
        """Per site (a service's own frontend, or a shared listen's: sites.py), its log reader."""
        self._answered_before: dict[str, dict[str, int]] = {}
        """Per service, HAProxy's response counters when its log reader started (an adopted
        HAProxy answered requests no reader of ours saw)."""
        self._certs = Certificates()
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
                await self._start_logs(running)
                if not running:
                    await self._start()
                    for table in list(self._tables.values()):
                        await self._sync(table)
                else:
                    await self._hold_listeners()
                    if self._shape_text() != self.saved.shape():
                        await self._dump_state()
                        await self.proc.reload(self._render())
                        self.saved.save_shape(self._shape_text())
                        self.listeners.release(keep=self._addresses())   # an address given up: refused
                        await self._hold_listeners()
                    elif before.get(service) != want:
                        await self._sync_hosts()     # a change of domains only: the host maps
            except RouterError:
                if self._services != before:   # never keep a service HAProxy could not take
                    self._services = before
                    self.saved.save_services(self._services)
                    with contextlib.suppress(RouterError):
                        self._render()
                raise
            finally:
                await self._prune_logs()
            await self._sweep()
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
                await self._sync(table, previous=previous)
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
        doc = self._traffic(service).stats(service)
        doc.update(self._listener(service, doc))
        table = self._tables.get(service)
        if table is None:
            return {**doc, "version": 0, "limits": {}, "tls": None}
        tracks = {t: {**TrackMetrics().snapshot(), **doc["tracks"].get(t, {}), "release": table.releases.get(t, "")}
                  for t in {*table.tracks, *doc["tracks"]}}
        seen = doc["upstreams"]
        ups = {u.id: {**UpstreamMetrics().snapshot(), **seen.get(cfg.server_name(u), {}), "track": t,
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
            tracks = traffic.stats(service)["tracks"]
            before = self._answered_before.get(service, {})
            if all(tracks.get(be.split("__", 1)[1], {}).get("requests", 0) >= n - before.get(be, 0)
                   for be, n in sent.items()):
                return
            await asyncio.sleep(0.01)

    async def series(self, service: str, since: float) -> dict[str, Any]:
        return self._traffic(service).series(since, service)

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
                await self._dump_state()
                await self.proc.reload(self._render())
                self.saved.save_shape(self._shape_text())
                self.listeners.release(keep=self._addresses())
            await self._prune_logs()

    async def close(self) -> None:
        """Stop reading the traffic logs; HAProxy itself keeps serving (the daemon is going away)."""
        self.listeners.close()
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
            await self._sync_cert(table)     # after the maps: users move first
            if not final:
                return
            if await self._read_back(table, want, tries=1):
                return                   # servers unchanged: the saved server state still holds
            log.info("HAProxy for %s differs from table version %d after the change: sending all of it", s,
                     previous.version)
        await self._sync_cert(table)
        live = await self._server_states(s)
        limits = await self._limits(s) if any(live.values()) else {}
        for track, servers in want.items():
            backend = cfg.backend_name(s, track)
            for srv in servers:
                state = live.get(backend, {}).get(srv.name)
                if state is None:
                    await api.add_server(backend, srv.name, cfg.server_line(srv, table.max_conns_per_instance)
                                         .split(" ", 2)[2])
                else:
                    if limits.get((backend, srv.name), table.max_conns_per_instance) != table.max_conns_per_instance:
                        await api.change(f"set maxconn server {backend}/{srv.name} {table.max_conns_per_instance}")
                    if state != "0":
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

    async def _sync_cert(self, table: RoutingTable) -> None:
        """The table's certificate to its file (what a restart loads) and, when the running
        worker serves another, into it with `set ssl cert` + `commit ssl cert`: new handshakes
        get it, open connections keep theirs, nothing reloads. A table without TLS has no cert
        (its bind line has no `ssl`: turning TLS on or off is a configuration change)."""
        pem = self._certs.of(table)
        if pem is None:
            return
        self.saved.cert(table.service, pem.text)
        path = self.files.cert_file(table.service)
        if (await self.proc.api.show_cert(path)).get("SHA1 FingerPrint") != pem.sha1:
            await self.proc.api.replace_cert(path, pem.text)

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
            pem = self._certs.of(table)
            cert_ok = pem is None or (await api.show_cert(self.files.cert_file(table.service))
                                      ).get("SHA1 FingerPrint") == pem.sha1
            if got == expect and ready == expect_servers and cert_ok:
                return True
            if attempt + 1 < tries:
                await asyncio.sleep(0.01)
        return False

    async def _limits(self, service: str) -> dict[tuple[str, str], int]:
        """(backend, server) -> its maxconn now: a table's new per-instance limit is set on the
        servers it keeps (the configuration's shape leaves servers out, so no reload does it)."""
        return live.limits(await self.proc.api.stat_rows(f"{service}__"))

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
        for s, edge in sorted(self._services.items()):
            table = self._tables.get(s)
            if table is None:
                out.append(ServiceConfig(s, edge.listen, redirect_http=edge.redirect_http, domains=edge.domains))
                continue
            servers = ({t: tuple(Server(cfg.server_name(u), u.host, u.port) for u in ups)
                        for t, ups in table.tracks.items()} if with_servers else {})
            out.append(cfg.service_config(edge.listen, table, servers, edge.redirect_http, edge.domains))
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

    async def _sync_hosts(self) -> None:
        """The shared frontends' host maps to what the services' domains say, swapped atomically."""
        for site, svcs in sites.group(self._configs(with_servers=False)).items():
            if svcs[0].domains:
                for kind, rows in sites.host_entries(svcs).items():
                    path = self.files.map_file(site, kind)
                    await self.proc.api.replace_map(path, rows)
                    if sorted(await self.proc.api.show_map(path)) != sorted(rows):
                        raise RouterError(f"HAProxy does not serve the host map {path} after the change",
                                          f"see {self.proc.log_path}")

    async def _dump_state(self) -> None:
        with contextlib.suppress(RouterError, OSError):
            self.saved.server_state(await self.proc.api.dump_servers_state())


    # -- process and metrics --------------------------------------------------------------------

    async def _running(self) -> bool:
        if self.proc.master_pid is None and not await self.proc.adopt():
            return False
        return not self.proc.exited() and await self.proc.answering()

    def _site(self, service: str) -> str:
        edge = self._services[service]
        return sites.shared_name(edge.listen) if edge.domains else service

    async def _start_logs(self, running: bool) -> None:
        """A reader per site on its log socket, before HAProxy is told to send there (a shared
        frontend's reader counts each line under the service its backend names)."""
        for s, edge in self._services.items():
            site = self._site(s)
            if site not in self._logs:
                traffic = TrafficLog(None if edge.domains else s)
                await traffic.start_stream(self.files.log_socket(site))
                self._logs[site] = traffic
                self._answered_before.pop(s, None)
            if s not in self._answered_before:
                self._answered_before[s] = {}
                if running:
                    with contextlib.suppress(RouterError):
                        self._answered_before[s] = await self.proc.api.backend_responses(f"{s}__")

    async def _prune_logs(self) -> None:
        """Close the readers of sites no service uses any more."""
        used = {self._site(s) for s in self._services}
        for site in [k for k in self._logs if k not in used]:
            await self._logs.pop(site).close()
        for s in [k for k in self._answered_before if k not in self._services]:
            del self._answered_before[s]

    def _traffic(self, service: str) -> TrafficLog:
        traffic = self._logs.get(self._site(service)) if service in self._services else None
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
