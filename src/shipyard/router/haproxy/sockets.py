"""HAProxy's listening sockets, also held by the daemon (as it holds the embedded router's,
listeners.py), so a killed HAProxy refuses nothing while it is restarted: the kernel keeps
queueing connections on the daemon's copy of each socket until the new worker accepts them.

Both directions use HAProxy's own socket transfer, the one a reloading HAProxy uses to take
the listeners of the old worker (`_getsocks` on a stats socket with `expose-fd listeners`):
- `take_copies`: after HAProxy started or reloaded, and when a new daemon adopts a running
  HAProxy, the daemon asks the worker's admin socket for copies of its listeners;
- `offer`: a HAProxy the daemon (re)starts is given `-x <socket>`, a unix socket the daemon
  answers `_getsocks` on with its copies, and takes them instead of binding new ones.
HAProxy itself binds a listen address the first time (and one a reload adds), so the daemon
holds exactly the sockets HAProxy's `bind` lines make (one per resolved address, its options)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from shipyard.errors import RouterError
from shipyard.router.listeners import addresses

GETSOCKS = b"_getsocks\n"
TIMEOUT = 5.0
MAX_FDS_PER_MESSAGE = 253
"""HAProxy's batch of descriptors per message (it asks for the next batch with an ack)."""
Address = tuple[int, str, int]


def _address(sock: socket.socket) -> Address | None:
    """(family, host, port) of a listening TCP socket; None for anything else."""
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return None
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        host, port = sock.getsockname()[:2]
    except OSError:
        return None
    return int(sock.family), str(host), int(port)


class Listeners:
    """The daemon's copies of HAProxy's listening sockets, by address."""

    def __init__(self) -> None:
        self._held: dict[Address, socket.socket] = {}

    def holds(self, listens: Iterable[str]) -> bool:
        """Every address HAProxy binds for `listens` has a copy here (as far as the daemon can tell)."""
        return all(any(a in self._held for a in addresses(listen)) for listen in listens)

    def sockets(self) -> list[socket.socket]:
        return list(self._held.values())

    def take(self, copies: list[socket.socket]) -> list[Address]:
        """Keep the listening TCP sockets among `copies` whose address is not held yet; close
        the rest. The addresses newly held."""
        got = []
        for s in copies:
            addr = _address(s)
            if addr is None or addr in self._held:
                s.close()
                continue
            self._held[addr] = s
            got.append(addr)
        return got

    def release(self, keep: Iterable[str]) -> None:
        """Close the copies of addresses no service in `keep` listens on, shut down first: a
        HAProxy still running with such a socket must refuse on it, not queue for nobody."""
        wanted = {a for listen in keep for a in addresses(listen)}
        for addr in [a for a in self._held if a not in wanted]:
            s = self._held.pop(addr)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        """Forget the copies without touching the sockets HAProxy serves on (the daemon exits)."""
        for s in self._held.values():
            s.close()
        self._held.clear()


async def take_copies(admin_socket: Path, timeout: float = TIMEOUT) -> list[socket.socket]:
    """Copies of every socket the HAProxy worker on `admin_socket` exports (a count, then
    batches of descriptors, each but the last acknowledged)."""
    try:
        return await asyncio.wait_for(_getsocks(admin_socket), timeout)
    except TimeoutError:
        raise RouterError(f"HAProxy did not hand over its listening sockets on {admin_socket} within "
                          f"{timeout:g}s", "is its stats socket `expose-fd listeners`?") from None
    except OSError as e:
        raise RouterError(f"cannot take HAProxy's listening sockets over {admin_socket}: {e.strerror or e}",
                          "is HAProxy running? the daemon restarts it") from None


async def _getsocks(path: Path) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    got: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.setblocking(False)
        await loop.sock_connect(conn, str(path))
        await loop.sock_sendall(conn, GETSOCKS)
        head = b""
        while len(head) < 4:
            chunk = await loop.sock_recv(conn, 4 - len(head))
            if not chunk:
                raise OSError(f"HAProxy closed {path} before saying how many sockets it has")
            head += chunk
        (count,) = struct.unpack("=i", head)
        try:
            while len(got) < count:
                data, fds = await _recv_fds(loop, conn)
                got += [socket.socket(fileno=fd) for fd in fds]
                if not data and not fds:
                    raise OSError(f"HAProxy closed {path} after {len(got)} of {count} sockets")
                if len(got) < count:
                    await loop.sock_sendall(conn, struct.pack("=i", len(got)))
        except BaseException:
            for s in got:
                s.close()
            raise
    return got


async def _recv_fds(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[bytes, list[int]]:
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_FDS_PER_MESSAGE * 300, MAX_FDS_PER_MESSAGE)
            return data, fds
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(conn.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(conn.fileno())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


@contextlib.asynccontextmanager
async def offer(path: Path, socks: list[socket.socket]) -> AsyncIterator[Path | None]:
    """While open, `path` answers `_getsocks` with `socks` (for `haproxy -x path`); None when
    there is nothing to offer. Removed on exit."""
    if not socks:
        yield None
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(4)
        server.setblocking(False)
        task = asyncio.ensure_future(_serve(server, socks))
        try:
            yield path
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _serve(server: socket.socket, socks: list[socket.socket]) -> None:
    """Each connection: `_getsocks` -> the count, then the sockets in batches, each entry
    described as HAProxy reads it (no namespace, no interface, 4 bytes of unused options)."""
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(server)
        with conn:
            conn.setblocking(False)
            try:
                line = await asyncio.wait_for(loop.sock_recv(conn, 64), TIMEOUT)
                if line != GETSOCKS:
                    continue
                await loop.sock_sendall(conn, struct.pack("=i", len(socks)))
                for i in range(0, len(socks), MAX_FDS_PER_MESSAGE):
                    batch = socks[i:i + MAX_FDS_PER_MESSAGE]
                    await _send_fds(loop, conn, b"\0\0\0\0\0\0" * len(batch), [s.fileno() for s in batch])
                    await asyncio.wait_for(loop.sock_recv(conn, 4), TIMEOUT)   # its ack
            except (OSError, TimeoutError):
                continue


async def _send_fds(loop: asyncio.AbstractEventLoop, conn: socket.socket, data: bytes, fds: list[int]) -> None:
    while True:
        try:
            socket.send_fds(conn, [data], fds)
            return
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(conn.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_writer(conn.fileno())
