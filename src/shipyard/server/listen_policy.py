"""Where the API may listen. The API speaks plain HTTP with a bearer token: on any address
but loopback, the token and every request cross the network in clear text. So a
non-loopback `--listen` is refused unless TLS is configured (the API has none yet) or the
operator says `--insecure-listen`."""

from __future__ import annotations

import ipaddress

from shipyard.errors import ShipyardError

TLS_AVAILABLE = False
"""The API has no TLS today; when it does, a non-loopback address with TLS is accepted."""


class InsecureListen(ShipyardError):
    """`serve --listen` names an address reachable from the network without TLS."""


def listen_host(listen: str) -> str:
    host = listen.rpartition(":")[0]
    return host.strip("[]") or "127.0.0.1"


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False    # a name could resolve to anything: only an address proves loopback


def check_listen(listen: str, insecure_listen: bool = False, tls: bool = TLS_AVAILABLE) -> None:
    """Raise InsecureListen for a network-reachable address without TLS or --insecure-listen."""
    host = listen_host(listen)
    if is_loopback_host(host) or tls or insecure_listen:
        return
    port = listen.rpartition(":")[2]
    if not port.strip("0"):     # port 0 (or none): the tunnel needs a real one
        port = "PORT"
    raise InsecureListen(
        f"refusing to listen on {listen}: {host} is reachable from the network and the API has no TLS, so "
        "the API token and every request would cross the network in clear text",
        f"listen on 127.0.0.1 and reach it through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} HOST), or pass "
        "--insecure-listen if every host on that network is trusted (then allow its name with --api-host NAME)")
