"""A table's certificate as HAProxy takes it: the chain and the key in one PEM, checked first.

HAProxy's `crt` (and `set ssl cert`) want one file holding the certificate chain and its
unencrypted key. Before anything is written or sent, the pair goes through the embedded
router's own check (router/dataplane/tls.build_context: the leaf has the table's SHA-256
fingerprint, the key is the certificate's and not encrypted), so both routers refuse the
same tables with the same words. `show ssl cert` reports a SHA-1 fingerprint: `sha1` is the
leaf's, for reading back what HAProxy serves."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from dataclasses import dataclass

from shipyard.errors import RouterError
from shipyard.router.dataplane.tls import build_context
from shipyard.router.table import RoutingTable, TableTls

_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class Pem:
    text: str
    """The chain, then the key: what the 0600 file under HAProxy's root holds."""
    sha1: str
    """Upper-case hex, as `show ssl cert` prints `SHA1 FingerPrint`."""


def pem_of(tls: TableTls) -> Pem:
    """The combined PEM of `tls`'s files; RouterError (a TableError) when they cannot be served.
    Blocking file I/O: run it in a thread."""
    build_context(tls)     # raises TableError with the reason, as the embedded router would
    try:
        with open(tls.cert, encoding="ascii") as f:
            chain = f.read()
        with open(tls.key, encoding="ascii") as f:
            key = f.read()
    except (OSError, ValueError) as e:
        raise RouterError(f"cannot read tls files {tls.cert} / {tls.key}: {getattr(e, 'strerror', None) or e}") \
            from None
    first = _CERT.search(chain)
    if first is None:   # build_context found one: the file changed in between
        raise RouterError(f"tls certificate {tls.cert} changed while it was read", "deploy again")
    sha1 = hashlib.sha1(ssl.PEM_cert_to_DER_cert(first.group(0)), usedforsecurity=False).hexdigest().upper()
    return Pem(chain.rstrip("\n") + "\n" + key.rstrip("\n") + "\n", sha1)


class Certificates:
    """Per service, the PEM of the certificate its table names (checked once per table) and how
    often the served one changed, for the adapter's stats (the embedded router's `rotations`)."""

    def __init__(self) -> None:
        self.pems: dict[str, Pem] = {}
        self.rotations: dict[str, int] = {}

    async def check(self, table: RoutingTable, served: RoutingTable | None) -> Pem | None:
        """The PEM of `table`'s certificate, before anything changes: RouterError saying why
        it is refused; the one held already when the served table names the same files."""
        if table.tls is None:
            return None
        if served is not None and served.tls == table.tls and table.service in self.pems:
            return self.pems[table.service]
        try:
            return await asyncio.to_thread(pem_of, table.tls)
        except RouterError as e:
            raise RouterError(f"cannot apply table version {table.version} to HAProxy for {table.service}: "
                              f"its certificate is refused: {e.message}",
                              e.hint or "the served certificate stays; fix the files and deploy again") from None

    def of(self, table: RoutingTable) -> Pem | None:
        """The PEM for a table being served (one saved by an earlier daemon is read again)."""
        if table.tls is None:
            return None
        pem = self.pems.get(table.service)
        if pem is None:
            try:
                pem = self.pems[table.service] = pem_of(table.tls)
            except RouterError as e:
                raise RouterError(f"HAProxy cannot serve {table.service}'s certificate: {e.message}",
                                  "deploy the service again with a certificate that can be served") from None
        return pem

    def put(self, service: str, pem: Pem | None) -> None:
        if pem is None:
            self.pems.pop(service, None)
        else:
            self.pems[service] = pem

    def count(self, previous: RoutingTable | None, table: RoutingTable) -> None:
        """A table serving another certificate than the one before it is a rotation (TLS
        turned off, then on, is none: as the embedded router counts)."""
        before = previous.tls.fingerprint if previous is not None and previous.tls else None
        now = table.tls.fingerprint if table.tls else None
        if before is not None and now is not None and before != now:
            self.rotations[table.service] = self.rotations.get(table.service, 0) + 1

    def forget(self, service: str) -> None:
        self.pems.pop(service, None)
        self.rotations.pop(service, None)
