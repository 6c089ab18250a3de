"""Reading the spec a request names, off the event loop: a hostile or huge file costs a
worker thread (bounded by spec/bounded.py), never the daemon's answers to everyone else.
Also what the spec should be told before it is used: its warnings (a certificate close to
expiry among them), and a listen host that does not resolve (the router would otherwise die
with "unknown error -2"). A certificate that cannot be served at all is refused here."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from shipyard.certificates import expiry_warning, read_pair
from shipyard.errors import SpecError
from shipyard.spec import Spec, load_spec, spec_warnings


async def read_spec(path: str) -> Spec:
    return await asyncio.to_thread(load_spec, path)


async def checked_spec(path: str) -> tuple[Spec, list[str]]:
    """The spec at `path` and its warnings; SpecError if its listen host cannot be resolved."""
    spec = await read_spec(path)
    await asyncio.to_thread(check_resolvable, spec)
    warnings = spec_warnings(spec)
    if spec.tls is not None:
        cert = await asyncio.to_thread(read_pair, spec.resolve_path(spec.tls.cert), spec.resolve_path(spec.tls.key))
        if (w := expiry_warning(cert)) is not None:
            warnings.append(w)
    return spec, warnings


def check_resolvable(spec: Spec) -> None:
    host, port = spec.listen_host, spec.listen_port
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise SpecError(f"{spec.source}: cannot resolve host {host} in listen: {spec.listen} ({reason})",
                        "use an IP address (like 127.0.0.1) or a name in /etc/hosts") from None
