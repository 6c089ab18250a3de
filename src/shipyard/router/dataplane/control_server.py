"""The router's control socket: how the daemon pushes tables and reads metrics.

Newline-delimited JSON over a unix stream socket (mode 0600), one response per
request, several requests per connection. Modelled on HAProxy's Runtime API: the
data plane never restarts to change its routing, so no client connection is ever
dropped by a deploy. A table is persisted (atomically) before the daemon is told it
was taken, so a router restarted after a crash comes back with the last table it
acknowledged; one it could not persist is not kept.

`listen_fds` hands the router's listening sockets back to a daemon (SCM_RIGHTS on the
reply): a daemon restarted while its router ran holds no copy of the socket it once
bound, and gets one this way, so the router's next crash refuses no connection either.

This is the server side, inside the router process: `ControlService` (the ops) and
`serve_control` (the socket). The daemon's side is router/control_client.py; the
framing both use is router/wire.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from shipyard.errors import RouterError
from shipyard.router.table import RoutingTable, TableError
from shipyard.router.wire import MAX_LINE, encode_line
from shipyard.router.wire import error_reply as _error

log = logging.getLogger("shipyard.router")

class DataPlane(Protocol):
    """What the control service needs from the proxy (proxy_server.ProxyServer)."""

    service: str
    listen: str
    has_table: bool

    @property
    def table(self) -> RoutingTable: ...

    def swap(self, table: RoutingTable) -> None: ...

    def check(self, table: RoutingTable) -> None:
        """Raise TableError if `table` cannot be served (its certificate); changes nothing."""

    def stats(self) -> dict[str, Any]: ...

    def series(self, since: float) -> dict[str, Any]: ...

    def listen_fds(self) -> list[int]:
        """The fds of the sockets it accepts on (none once it drains)."""
        ...


# -- the persisted table -----------------------------------------------------------


def save_table(path: Path, table: RoutingTable) -> None:
    write_durably(path, json.dumps(table.to_dict(), indent=1, sort_keys=True).encode())


def write_durably(path: Path, data: bytes) -> None:
    """Write temp file, fsync, rename, fsync dir: a crash leaves the old or the new contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_table(path: Path, service: str) -> RoutingTable | None:
    """The last persisted table, or None (missing, unreadable or for another service)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("cannot read table %s: %s; starting with an empty table", path, e.strerror)
        return None
    try:
        table = RoutingTable.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        log.error("table %s is invalid (%s); starting with an empty table", path, e)
        return None
    if table.service != service:
        log.error("table %s is for service %s, not %s; ignoring it", path, table.service, service)
        return None
    return table


# -- server side -----------------------------------------------------------------


class ControlService:
    """The ops of the control protocol, independent of the socket that carries them."""

    def __init__(self, plane: DataPlane, table_path: Path, on_shutdown: Callable[[], None]) -> None:
        self.plane = plane
        self.table_path = table_path
        self.on_shutdown = on_shutdown

    def handle(self, request: Any) -> tuple[dict[str, Any], bool]:
        """Answer one request; the flag asks the caller to shut down after replying."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _error('a request is a JSON object with an "op" field'), False
        op = request["op"]
        if op == "ping":
            p = self.plane
            return {"ok": True, "pid": os.getpid(), "service": p.service, "listen": p.listen,
                    "redirect": getattr(p, "redirect", None), "version": p.table.version}, False
        if op == "set_table":
            return self._set_table(request.get("table")), False
        if op == "get_table":
            return {"ok": True, "table": self.plane.table.to_dict() if self.plane.has_table else None}, False
        if op == "stats":
            return {"ok": True, "stats": self.plane.stats()}, False
        if op == "series":
            since = request.get("since", 0)
            if isinstance(since, bool) or not isinstance(since, int | float):
                return _error(f'series needs "since", a unix time in seconds, got {since!r}'), False
            return {"ok": True, **self.plane.series(since)}, False
        if op == "shutdown":
            return {"ok": True}, True
        if op == "listen_fds":      # answered by serve_connection, which can pass fds
            return _error("listen_fds needs the control socket (the fds travel with the reply)"), False
        return _error(f"unknown op {op!r} (expected ping, set_table, get_table, stats, series, "
                      "listen_fds or shutdown)"), False

    def _set_table(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            return _error('set_table needs a "table" object')
        try:
            table = RoutingTable.from_dict(raw)
        except (KeyError, ValueError, TypeError) as e:
            return _error(f"invalid table: {e}")
        plane = self.plane
        if table.service != plane.service:
            return _error(f"the table is for service {table.service!r} but this router serves {plane.service!r}")
        for track, ups in table.tracks.items():
            for u in ups:
                if not 0 < u.port < 65536 or not u.host:
                    return _error(f"invalid address {u.host}:{u.port} for {u.id} in track {track!r}")
        if plane.has_table and table.version < plane.table.version:
            return _error(f"stale table: version {table.version} is older than the served version "
                          f"{plane.table.version}")
        # Serve first, persist second: the swap is the switch a rollback waits for, and the
        # two fsyncs need not delay it. The reply still waits for the disk, and a table that
        # cannot be persisted is swapped back out, so what the daemon is told, what is served
        # and what a restarted router loads agree. (The very first table has nothing to go
        # back to, so it is persisted first.)
        try:
            plane.check(table)
        except TableError as e:   # its certificate cannot be served: the old table keeps serving
            return _error(f"table version {table.version} refused: {e}")
        previous = plane.table if plane.has_table else None
        if previous is not None:
            plane.swap(table)
        try:
            save_table(self.table_path, table)
        except OSError as e:
            if previous is not None:
                plane.swap(previous)
            return _error(f"cannot persist the table to {self.table_path}: {e.strerror or e}")
        if previous is None:
            plane.swap(table)
        return {"ok": True, "version": table.version}

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        shutdown = False
        try:
            while not shutdown:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE: the stream is no longer framed
                    writer.write(encode_line(_error(f"request longer than {MAX_LINE} bytes")))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError as e:
                    response = _error(f"invalid JSON: {e}")
                else:
                    if isinstance(request, dict) and request.get("op") == "listen_fds":
                        await self._hand_over(writer, redirect=request.get("which") == "redirect")
                        continue
                    if isinstance(request, dict) and request.get("op") == "take_listen":
                        response = await self._take_listen(request.get("from"))
                        writer.write(encode_line(response))
                        await writer.drain()
                        continue
                    try:
                        response, shutdown = self.handle(request)
                        settled = getattr(self.plane, "settled", None)
                        if settled is not None:   # e.g. the listener switching to TLS: done before the reply
                            await settled()
                    except Exception as e:  # a bug must not kill the control socket
                        log.exception("control request failed")
                        response = _error(f"internal error: {e}")
                writer.write(encode_line(response))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            if shutdown:
                self.on_shutdown()


    async def _hand_over(self, writer: asyncio.StreamWriter, redirect: bool = False) -> None:
        """Reply {"ok", "fds": n} with the listening sockets' fds attached to its bytes (with
        `redirect`, those of the plain-HTTP redirect listener)."""
        if redirect:
            fds = getattr(self.plane, "redirect_fds", list)()
            if not fds:
                writer.write(encode_line(_error("this router has no redirect listener")))
                await writer.drain()
                return
        else:
            fds = self.plane.listen_fds()
        if not fds:
            writer.write(encode_line(_error("this router holds no listening socket (it is shutting down)")))
            await writer.drain()
            return
        line = encode_line({"ok": True, "fds": len(fds), "listen": self.plane.listen})
        transport_sock = writer.get_extra_info("socket")
        # The transport's socket cannot sendmsg; a dup of it shares the connection (and the
        # kernel's send buffer, empty here: every earlier reply was drained).
        with socket.fromfd(transport_sock.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            for _ in range(100):
                try:
                    sent = socket.send_fds(conn, [line], fds)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            else:
                raise OSError("the control connection stayed full; listening sockets not handed over")
        log.info("listening sockets handed over on the control socket (%d)", len(fds))
        if sent < len(line):
            writer.write(line[sent:])
            await writer.drain()


    async def _take_listen(self, path: Any) -> dict[str, Any]:
        """Fetch listening sockets from the unix socket `path` (the daemon's, SCM_RIGHTS) and accept
        on them too: a departing worker's, so what waits in its backlog is served here."""
        accept_on = getattr(self.plane, "accept_on", None)
        if accept_on is None or not isinstance(path, str) or not os.path.isabs(path):
            return _error(f"take_listen needs \"from\", the absolute path of a unix socket, got {path!r}")
        loop = asyncio.get_running_loop()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setblocking(False)
        fds: list[int] = []
        try:
            async with asyncio.timeout(5.0):
                await loop.sock_connect(conn, path)
                while True:
                    ready = loop.create_future()
                    loop.add_reader(conn.fileno(), ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(conn.fileno())
                    try:
                        data, got, _flags, _addr = socket.recv_fds(conn, 1024, 16, socket.MSG_CMSG_CLOEXEC)
                    except BlockingIOError:
                        continue
                    fds += got
                    if not data or b"\n" in data:
                        break
        except (OSError, TimeoutError) as e:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return _error(f"cannot take listening sockets from {path}: {getattr(e, 'strerror', None) or e}")
        finally:
            conn.close()
        accept_on([socket.socket(fileno=fd) for fd in fds])
        log.info("accepting on %d more listening socket(s), handed over by the daemon", len(fds))
        return {"ok": True, "fds": len(fds)}


async def claim_socket(path: Path) -> None:
    """Remove a stale socket file; refuse if a live router still answers on it."""
    if not os.path.lexists(path):
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    writer.close()
    raise RouterError(f"another router already answers on {path}",
                      hint="stop it first (shipyard stops it when the service is removed)")


async def serve_control(path: Path, service: ControlService) -> asyncio.AbstractServer:
    """Listen on `path` (call claim_socket first); the socket is 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(service.serve_connection, str(path), limit=MAX_LINE)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def remove_socket(path: Path, inode: int) -> None:
    """Remove our socket file unless a newer router already replaced it."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
