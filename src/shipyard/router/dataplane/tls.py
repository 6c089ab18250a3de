"""TLS termination for the listener: one SSLContext per certificate, chosen per handshake
(by SNI among the services sharing the address).

asyncio fixes a server's SSLContext when it starts serving, so the servers are given one
`front` context that never changes, and its SNI callback (which OpenSSL runs for every
ClientHello, with or without a server name) moves the handshake onto the context of the
certificate served now. A table with another fingerprint builds a new context and makes it
the current one: handshakes from then on use it, connections already open keep theirs, and
nothing listens anew. A certificate that cannot be loaded raises TableError before anything
changes, so the swap is refused and the old table (and certificate) keeps serving."""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Callable

from shipyard.router.table import TableError, TableTls

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to finish the TLS handshake; a slower one is disconnected. The
handshake runs on the event loop beside everything else, never blocking the accept loop."""
ALPN = ["http/1.1"]

_FIRST_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def build_context(tls: TableTls) -> ssl.SSLContext:
    """A server context for `tls`'s files, whose leaf must have the table's fingerprint."""
    try:
        with open(tls.cert, encoding="ascii", errors="replace") as f:
            first = _FIRST_CERT.search(f.read())
        if first is None:
            raise TableError(f"tls certificate {tls.cert} holds no PEM certificate")
        got = hashlib.sha256(ssl.PEM_cert_to_DER_cert(first.group(0))).hexdigest()
    except OSError as e:
        raise TableError(f"cannot read tls certificate {tls.cert}: {e.strerror or e}") from None
    except ValueError as e:
        raise TableError(f"tls certificate {tls.cert} cannot be read: {e}") from None
    if got != tls.fingerprint:
        raise TableError(f"tls certificate {tls.cert} has fingerprint {got[:16]}..., the table says "
                         f"{tls.fingerprint[:16]}...: the file changed since it was installed")
    ctx = _base_context()

    def no_passphrase() -> bytes:
        raise TableError(f"tls key {tls.key} is encrypted")

    try:
        ctx.load_cert_chain(tls.cert, tls.key, password=no_passphrase)
    except OSError as e:   # ssl.SSLError is an OSError
        raise TableError(f"tls certificate {tls.cert} / key {tls.key} cannot be loaded: "
                         f"{getattr(e, 'reason', None) or e.strerror or e}") from None
    return ctx


class TlsTerminator:
    """A service's certificate, swappable for new handshakes without a restart."""

    def __init__(self) -> None:
        self.current: ssl.SSLContext | None = None
        self.served: TableTls | None = None
        self.fingerprint: str | None = None
        self.rotations = 0
        """How often the served certificate changed (after the first)."""

    def prepare(self, tls: TableTls | None) -> ssl.SSLContext | None:
        """The context for `tls` (the current one when files and fingerprint are the same);
        raises TableError if its certificate cannot be served. Changes nothing."""
        if tls is None:
            return None
        if tls == self.served and self.current is not None:
            return self.current
        return build_context(tls)

    def serve(self, tls: TableTls | None, ctx: ssl.SSLContext | None) -> None:
        """Make `ctx` (from prepare) the context of every handshake from now on."""
        fp = tls.fingerprint if tls else None
        if fp != self.fingerprint and self.fingerprint is not None and fp is not None:
            self.rotations += 1
        self.current, self.served, self.fingerprint = ctx, tls, fp



class SniFront:
    """The one context the listener's servers are given: its SNI callback moves each handshake
    onto the context `choose(server_name)` names (the service the name routes to; for no or an
    unknown name, the listener's default service, see proxy_server.py)."""

    def __init__(self, choose: Callable[[str | None], ssl.SSLContext | None]) -> None:
        self.choose = choose
        self.front = _base_context()
        self.front.sni_callback = self._choose

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, _front: ssl.SSLContext) -> None:
        ctx = self.choose(server_name)
        if ctx is None:     # TLS was just turned off: this late handshake gets nothing
            return None
        sslobj.context = ctx
        return None
