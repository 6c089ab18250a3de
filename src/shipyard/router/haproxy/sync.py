"""Making the running HAProxy serve what shipyard decided, through its Runtime API only: one
table (servers added, limits changed, maps swapped, the certificate replaced, old servers put
in maintenance, then everything read back), the shared frontends' host maps, the deletion of
servers in maintenance once their connections are gone, and the server-state file a restart
loads. The adapter (adapter.py) decides when; this module knows how (maps.py says which map
does what)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from shipyard.errors import RouterError
from shipyard.router.haproxy import config as cfg
from shipyard.router.haproxy import live, sites
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.maps import MAP_KINDS, map_entries
from shipyard.router.haproxy.process import HAProxyProcess
from shipyard.router.haproxy.saved import Saved
from shipyard.router.haproxy.services import Server, ServiceConfig, backend_name, server_name
from shipyard.router.haproxy.tls import Certificates
from shipyard.router.table import RoutingTable, Upstream

log = logging.getLogger("shipyard.router.haproxy")

READ_BACK_TRIES = 20


class Sync:
    """The Runtime API commands that bring one HAProxy to a table, and what they leave pending."""

    def __init__(self, proc: HAProxyProcess, files: Files, saved: Saved, certs: Certificates) -> None:
        self.proc, self.files, self.saved, self.certs = proc, files, saved, certs
        self.pending: set[tuple[str, str]] = set()
        """(backend, server) put in maintenance whose deletion HAProxy refused (connections open)."""

    async def table(self, table: RoutingTable, final: bool = True, previous: RoutingTable | None = None) -> None:
        """Make HAProxy serve `table`: servers first (new ones in rotation of their own track),
        then the maps (the bucket map, which moves users, last), then old servers out. `final`:
        read back and save the state; else a worker about to be replaced by a reload.
        `previous`: the table HAProxy was last made to serve. Only what differs from it is sent
        (a rollback: the same servers, one `set map` per changed map, not 9 map commands and a
        server listing before users move); should the read-back then differ, everything is sent."""
        api = self.proc.api
        s = table.service
        want = await self.servers(table)
        if previous is not None and previous.tracks == table.tracks:
            old = map_entries(previous)
            for kind, entries in map_entries(table).items():
                await self._push_map(s, kind, entries, old[kind])
            self.saved.maps(s, table)
            await self._cert(table)     # after the maps: users move first
            if not final:
                return
            if await self.read_back(table, want, tries=1):
                return                   # servers unchanged: the saved server state still holds
            log.info("HAProxy for %s differs from table version %d after the change: sending all of it", s,
                     previous.version)
        await self._cert(table)
        live = await self.server_states(s)
        limits = await self._limits(s) if any(live.values()) else {}
        for track, servers in want.items():
            backend = backend_name(s, track)
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
                self.pending.discard((backend, srv.name))
        for kind, entries in map_entries(table).items():
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
                        self.pending.add((backend, name))
        if final:
            if not await self.read_back(table, want):
                raise RouterError(f"HAProxy does not serve table version {table.version} after the change "
                                  f"(maps or servers differ when read back)", f"see {self.proc.log_path}")
            await self.dump_state()

    async def _cert(self, table: RoutingTable) -> None:
        """The table's certificate to its file (what a restart loads) and, when the running
        worker serves another, into it with `set ssl cert` + `commit ssl cert`: new handshakes
        get it, open connections keep theirs, nothing reloads. A table without TLS has no cert
        (its bind line has no `ssl`: turning TLS on or off is a configuration change)."""
        pem = self.certs.of(table)
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

    async def read_back(self, table: RoutingTable, want: dict[str, tuple[Server, ...]],
                         tries: int = READ_BACK_TRIES) -> bool:
        """What HAProxy says it serves must be the table: the maps and the servers in rotation."""
        api = self.proc.api
        expect = {k: sorted(v) for k, v in map_entries(table).items()}
        expect_servers = {backend_name(table.service, t): {srv.name for srv in ss} for t, ss in want.items() if ss}
        for attempt in range(tries):
            got = {k: sorted(await api.show_map(self.files.map_file(table.service, k))) for k in MAP_KINDS}
            live = await self.server_states(table.service)
            ready = {b: {n for n, st in ss.items() if st == "0"} for b, ss in live.items()}
            ready = {b: ns for b, ns in ready.items() if ns}
            pem = self.certs.of(table)
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

    async def server_states(self, service: str) -> dict[str, dict[str, str]]:
        """backend -> server -> srv_admin_state ("0": in rotation), for the service's backends."""
        out: dict[str, dict[str, str]] = {}
        for row in await self.proc.api.servers_state():
            be = row.get("be_name", "")
            if be.startswith(f"{service}__"):
                out.setdefault(be, {})[row.get("srv_name", "")] = row.get("srv_admin_state", "0")
        return out

    async def sweep(self) -> None:
        """Delete the servers in maintenance whose connections are gone by now."""
        for backend, name in sorted(self.pending):
            try:
                if await self.proc.api.del_server(backend, name):
                    self.pending.discard((backend, name))
            except RouterError as e:
                if "No such server" in e.message or "No such backend" in e.message:
                    self.pending.discard((backend, name))
                else:
                    log.warning("%s", e.message)

    async def servers(self, table: RoutingTable) -> dict[str, tuple[Server, ...]]:
        """Per track, its instances as servers (host names resolved: dynamic servers need addresses)."""
        out: dict[str, tuple[Server, ...]] = {}
        for track, ups in table.tracks.items():
            out[track] = tuple([Server(server_name(u), await _address(u), u.port) for u in ups])
        return out

    async def hosts(self, configs: list[ServiceConfig]) -> None:
        """The shared frontends' host maps to what the services' domains say, swapped atomically."""
        for site, svcs in sites.group(configs).items():
            if svcs[0].domains:
                for kind, rows in sites.host_entries(svcs).items():
                    path = self.files.map_file(site, kind)
                    await self.proc.api.replace_map(path, rows)
                    if sorted(await self.proc.api.show_map(path)) != sorted(rows):
                        raise RouterError(f"HAProxy does not serve the host map {path} after the change",
                                          f"see {self.proc.log_path}")

    async def dump_state(self) -> None:
        with contextlib.suppress(RouterError, OSError):
            self.saved.server_state(await self.proc.api.dump_servers_state())


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
