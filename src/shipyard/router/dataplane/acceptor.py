"""Accepting client connections in batches: every pending one (up to MAX_ACCEPT) per wakeup.

uvloop's server (libuv) accepts one connection per event-loop iteration. Under load an
iteration of the router takes milliseconds, so a burst of new clients (wrk's 1,000, a pool
reconnecting) waited in the kernel's accept queue, first request already sent, for up to
2 s: the router answered each request within a second of reading it, yet clients timed out.
HAProxy accepts up to tune.maxaccept connections per wakeup; so does this listener. It
keeps the two things proxy_server.py uses of an asyncio server: `sockets` and `close()`."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("shipyard.router")

MAX_ACCEPT = 512
"""Connections accepted per wakeup, at most: a larger burst is finished in the next iterations."""
RETRY_DELAY = 1.0
"""Out of file descriptors (or kernel memory): stop accepting this long, the clients wait in the backlog."""
BACKLOG = 4096
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Listener:
    """Accepts on one listening socket and hands each connection to `factory`'s protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 factory: Callable[[], asyncio.Protocol],
                 options: Callable[[], dict[str, Any]] | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.sockets = [sock]
        self.factory = factory
        self.options = options
        """Keyword arguments of connect_accepted_socket (ssl=...) for a connection accepted now:
        asked at each accept, so a table that turns TLS on or off applies from the next one."""
        self.closed = False
        self.warned = False
        self.starting: set[asyncio.Task[None]] = set()
        """Connections accepted whose transport is being made (the loop holds tasks weakly)."""
        sock.listen(BACKLOG)  # as asyncio's server does, also on a socket handed over already listening
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        sock, loop = self.sock, self.loop
        for _ in range(MAX_ACCEPT):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno not in OUT_OF_RESOURCES:
                    raise  # the loop logs it; the reader stays, as asyncio's server does
                if not self.warned:
                    self.warned = True
                    log.warning("cannot accept client connections: %s (raise the open files limit); "
                                "new clients wait in the backlog", e.strerror or e)
                loop.remove_reader(sock.fileno())
                loop.call_later(RETRY_DELAY, self._resume)
                return
            conn.setblocking(False)
            task = loop.create_task(self._serve(conn, self.options() if self.options else {}))
            self.starting.add(task)
            task.add_done_callback(self.starting.discard)

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    async def _serve(self, conn: socket.socket, options: dict[str, Any]) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn, **options)
        except (OSError, TimeoutError):  # reset (or a TLS handshake failed) before it could serve
            conn.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def bind(host: str, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to (as asyncio's create_server binds), for
    Listener; raises OSError. `reuse_port`: SO_REUSEPORT, so that the daemon can bind one more
    socket per router worker on the address (the kernel spreads connections over them)."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks
