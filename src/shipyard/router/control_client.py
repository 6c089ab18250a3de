"""The daemon's side of a router's control socket (see router/dataplane/control_server.py).

Every failure is a RouterError that says what to check, because the daemon shows
these to the user when a deploy cannot reach its router."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.table import RoutingTable
from shipyard.router.wire import MAX_LINE, encode_line

MAX_FDS = 16
"""More listening sockets than one `listen` address can resolve to."""


class RouterControlClient:
    """Talks to one router's control socket; every failure is a RouterError saying what to do."""

    def __init__(self, sock_path: str | Path, timeout: float = 5.0) -> None:
        self.sock_path = Path(sock_path)
        self.timeout = timeout

    async def ping(self) -> dict[str, Any]:
        return await self._call({"op": "ping"})

    async def set_table(self, table: RoutingTable) -> int:
        """Returns once the router persisted and serves `table`."""
        return int((await self._call({"op": "set_table", "table": table.to_dict()}))["version"])

    async def get_table(self) -> RoutingTable | None:
        raw = (await self._call({"op": "get_table"})).get("table")
        return RoutingTable.from_dict(raw) if raw else None

    async def stats(self) -> dict[str, Any]:
        return dict((await self._call({"op": "stats"}))["stats"])

    async def series(self, since: float) -> dict[str, Any]:
        """{"now": unix time, "series": {track: [{"t", "requests", "errors", "latency"}, ...]}}:
        the completed seconds after `since`, ascending; see Router.series."""
        r = await self._call({"op": "series", "since": since})
        return {"now": float(r["now"]), "series": dict(r["series"])}

    async def shutdown(self) -> None:
        await self._call({"op": "shutdown"})

    async def listen_sockets(self, which: str = "listen") -> list[socket.socket]:
        """The router's listening sockets (`which`: "redirect" for its plain-HTTP redirect
        listener), handed over with the reply (SCM_RIGHTS): the caller owns them. RouterError
        as for every op (an old router refuses the op)."""
        path = self.sock_path
        loop = asyncio.get_running_loop()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setblocking(False)
        data, fds = b"", []
        try:
            async with asyncio.timeout(self.timeout):
                await loop.sock_connect(conn, str(path))
                await loop.sock_sendall(conn, encode_line({"op": "listen_fds"} if which == "listen"
                                                          else {"op": "listen_fds", "which": which}))
                while b"\n" not in data:
                    chunk, got = await _recv_fds(loop, conn)
                    fds += got
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > MAX_LINE:
                        raise ValueError("answer longer than a line")
        except (FileNotFoundError, ConnectionRefusedError):
            _close_fds(fds)
            raise RouterError(f"nothing answers on the router control socket {path} (the router is gone)",
                              hint="the daemon restarts it; check the router log next to the socket") from None
        except TimeoutError:
            _close_fds(fds)
            raise RouterError(f"the router did not answer listen_fds on {path} within {self.timeout:g}s",
                              hint="it may be hung; check the router log next to the socket") from None
        except (OSError, ValueError) as e:
            _close_fds(fds)
            raise RouterError(f"cannot talk to the router on {path}: {getattr(e, 'strerror', None) or e}",
                              hint="check the router log next to the socket") from None
        finally:
            conn.close()
        try:
            self._check(json.loads(data) if data else None, "listen_fds")
        except RouterError:
            _close_fds(fds)
            raise
        return [socket.socket(fileno=fd) for fd in fds]

    async def retire(self) -> None:
        """Shut down as a worker no longer needed: clients are told to reconnect first."""
        await self._call({"op": "retire"})

    async def set_workers(self, workers: int) -> None:
        """The address has `workers` router processes now: enforce 1/workers of the limits."""
        await self._call({"op": "workers", "workers": workers})

    async def drop_listen(self, socks: list[socket.socket]) -> int:
        """Stop accepting on these listening sockets (another worker does now); how many it did."""
        return int((await self._call({"op": "drop_listen",
                                      "inodes": [os.fstat(s.fileno()).st_ino for s in socks]}))["dropped"])

    async def give_listen_sockets(self, socks: list[socket.socket], via: Path) -> None:
        """Make the router accept on `socks` too (a departing worker's). They travel over the unix
        socket `via`, bound here for the call: the control connection's reads drop passed fds."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            via.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(via))
            server.listen(1)
            server.setblocking(False)

            async def give() -> None:
                conn, _ = await loop.sock_accept(server)
                with conn:
                    conn.setblocking(True)
                    socket.send_fds(conn, [b"\n"], [s.fileno() for s in socks])

            task = asyncio.ensure_future(give())
            try:
                await self._call({"op": "take_listen", "from": str(via)})
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        except OSError as e:
            raise RouterError(f"cannot hand listening sockets to the router on {self.sock_path}: "
                              f"{e.strerror or e}", hint=f"check {via.parent}") from None
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                via.unlink()

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        path, op = self.sock_path, request["op"]
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
                writer.write(encode_line(request))
                await writer.drain()
                line = await reader.readline()
        except FileNotFoundError:
            raise RouterError(f"no router control socket at {path}",
                              hint="the router is not running; the daemon starts it (shipyard serve)") from None
        except ConnectionRefusedError:
            raise RouterError(f"nothing answers on the router control socket {path} (the router is gone)",
                              hint="the daemon restarts it; check the router log next to the socket") from None
        except TimeoutError:
            raise RouterError(f"the router did not answer {op} on {path} within {self.timeout:g}s",
                              hint="it may be hung; check the router log next to the socket") from None
        except (OSError, ValueError) as e:
            raise RouterError(f"cannot talk to the router on {path}: {getattr(e, 'strerror', None) or e}",
                              hint="check the router log next to the socket") from None
        finally:
            if writer is not None:
                writer.close()
        if not line:
            raise RouterError(f"the router closed {path} without answering {op}",
                              hint="it may have crashed; check the router log next to the socket")
        try:
            response = json.loads(line)
        except ValueError:
            raise RouterError(f"the router sent an unreadable answer to {op}") from None
        return self._check(response, op)

    def _check(self, response: Any, op: str) -> dict[str, Any]:
        if response is None:
            raise RouterError(f"the router closed {self.sock_path} without answering {op}",
                              hint="it may have crashed; check the router log next to the socket")
        if not isinstance(response, dict) or not response.get("ok"):
            error = response.get("error") if isinstance(response, dict) else response
            raise RouterError(f"the router refused {op}: {error}")
        return response


async def _recv_fds(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[bytes, list[int]]:
    """One recvmsg once `conn` is readable: bytes and the fds that came with them (close-on-exec)."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_LINE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            return data, list(fds)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(conn.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(conn.fileno())


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
