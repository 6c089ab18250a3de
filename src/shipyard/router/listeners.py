"""The daemon's listening sockets for a listen address's router: bound here and handed to each
router process it starts (embedded.py), so the address keeps accepting between two routers;
taken back from a router the daemon re-adopts (`listen_fds`), so its crash refuses nothing."""

from __future__ import annotations

import errno
import logging
import os
import socket

from shipyard.errors import RouterError
from shipyard.router.control_client import RouterControlClient
from shipyard.router.dataplane.acceptor import bind

log = logging.getLogger("shipyard.router")

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


def bind_listen(service: str, listen: str, key: str = "listen", more: bool = False) -> list[socket.socket]:
    """Bind and listen on every address `listen` resolves to (as asyncio's create_server
    would), with the router's error message and hint when the address cannot be used.
    `listen` sockets have SO_REUSEPORT, so that one more set can be bound per router worker
    (`more`); the first set is bound only once a probe without it could bind the address: a
    port another process holds is refused as "in use", never shared with it."""
    host, _, port = listen.rpartition(":")
    socks: list[socket.socket] = []
    try:
        if key == "listen" and not more:
            for probe in bind(host.strip("[]"), int(port)):
                probe.close()
        socks = bind(host.strip("[]"), int(port), reuse_port=key == "listen")
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


class HeldSockets:
    """The daemon's copies of each address's listening sockets (and of its redirect listener's),
    kept per normalized listen address (EmbeddedRouter's part that holds sockets)."""

    def __init__(self) -> None:
        self._sockets: dict[str, tuple[str, list[socket.socket]]] = {}
        """Per address, (the address, the daemon's copies of its listening sockets)."""
        self._redirect_sockets: dict[str, tuple[str, list[socket.socket]]] = {}
        """Per address, (tls.redirect_http, its plain-HTTP listener's sockets), when there is one."""
        self._no_handover: set[int] = set()
        """Routers (pids) that could not hand their sockets over: asked, and logged, once."""
        self._no_redirect_handover: set[int] = set()

    def _listen_sockets(self, service: str, listen: str, redirect: str | None = None,
                        more: bool = False) -> list[socket.socket]:
        """The daemon's listening sockets for `listen` (with `redirect`, its redirect listener's),
        bound now if it holds none for that address (`more`: other router workers of the address
        listen there already, so the probe for a foreign holder is skipped)."""
        table = self._redirect_sockets if redirect else self._sockets
        address = redirect or listen
        held = table.get(listen)
        if held is not None and held[0] == address:
            return held[1]
        self._close_listen(listen, redirect=bool(redirect))
        socks = bind_listen(service, address, "tls.redirect_http" if redirect else "listen", more=more)
        table[listen] = (address, socks)
        return socks

    async def _take_over_sockets(self, client: RouterControlClient, address: str, pid: int,
                                 listen: str | None = None) -> None:
        """Get a copy of a re-adopted router's listening sockets (with `listen`, the sockets of
        its redirect listener on `address`), so that its crash, too, refuses no connection.
        Sockets bound elsewhere than `address` are not kept."""
        redirect = listen is not None
        listen = listen or address
        refused = self._no_redirect_handover if redirect else self._no_handover
        if pid in refused:
            return
        what = "redirect listener's socket" if redirect else "listening socket"
        try:
            socks = await client.listen_sockets("redirect" if redirect else "listen")
        except RouterError as e:
            refused.add(pid)
            log.warning("the router on %s (pid %d) did not hand over its %s: %s; until it is "
                        "replaced, a crash of it refuses connections until the next router listens",
                        listen, pid, what, e.message)
            return
        want = addresses(address)
        got = {bound(s) for s in socks}
        if not socks or got != want:
            for sock in socks:
                sock.close()
            refused.add(pid)
            log.warning("the router on %s (pid %d) handed over sockets bound to %s, not %s; not kept",
                        listen, pid, ", ".join(sorted(map(str, got))) or "nothing", ", ".join(sorted(map(str, want))))
            return
        self._close_listen(listen, redirect)
        (self._redirect_sockets if redirect else self._sockets)[listen] = (address, socks)
        log.info("took over the %s of the router on %s (pid %d) on %s", what, listen, pid, address)

    def _close_listen(self, listen: str, redirect: bool = False) -> None:
        for s in (self._redirect_sockets if redirect else self._sockets).pop(listen, ("", []))[1]:
            s.close()

