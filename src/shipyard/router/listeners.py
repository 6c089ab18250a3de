"""The daemon's listening sockets for a service's router: bound here and handed to each router
process it starts (embedded.py), so the address keeps accepting between two routers."""

from __future__ import annotations

import errno
import os
import socket

from shipyard.errors import RouterError
from shipyard.router.dataplane.acceptor import bind

BACKLOG = 4096


def normalize_listen(listen: str) -> str:
    """'localhost:08080' and 'localhost:8080' are the same address for adoption purposes."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise RouterError(f"listen address {listen!r} is not HOST:PORT",
                          hint="write it like 127.0.0.1:8080 in the spec's `listen`")
    return f"{host}:{int(port)}"


def addresses(listen: str) -> set[tuple[int, str, int]]:
    """(family, host, port) of every address `listen` resolves to, as bind_listen binds them."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError):
        return set()
    return {(family, str(addr[0]), int(addr[1])) for family, _k, _p, _n, addr in infos}


def bound(sock: socket.socket) -> tuple[int, str, int] | None:
    """(family, host, port) a listening TCP socket is bound to; None for anything else."""
    try:
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        addr = sock.getsockname()
    except OSError:
        return None
    return (int(sock.family), str(addr[0]), int(addr[1]))


def bind_listen(service: str, listen: str, key: str = "listen") -> list[socket.socket]:
    """Bind and listen on every address `listen` resolves to (as asyncio's create_server
    would), with the router's error message and hint when the address cannot be used."""
    host, _, port = listen.rpartition(":")
    socks: list[socket.socket] = []
    try:
        socks = bind(host.strip("[]"), int(port))
        for s in socks:
            s.listen(BACKLOG)
    except OSError as e:
        for s in socks:
            s.close()
        gai = isinstance(e, socket.gaierror)
        reason = os.strerror(e.errno).lower() if e.errno and not gai else str(e.strerror or e)
        hint = (f"another process uses {listen}: stop it, or change `{key}` in the spec"
                if e.errno == errno.EADDRINUSE else f"change `{key}` in the spec")
        raise RouterError(f"the router for {service} cannot listen on {listen}: {reason}", hint=hint) from None
    return socks
