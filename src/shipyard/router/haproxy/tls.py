"""A table's certificate as HAProxy takes it: the chain and the key in one PEM, checked first.

HAProxy's `crt` (and `set ssl cert`) want one file holding the certificate chain and its
unencrypted key. Before anything is written or sent, the pair goes through the embedded
router's own check (router/dataplane/tls.build_context: the leaf has the table's SHA-256
fingerprint, the key is the certificate's and not encrypted), so both routers refuse the
same tables with the same words. `show ssl cert` reports a SHA-1 fingerprint: `sha1` is the
leaf's, for reading back what HAProxy serves."""

from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass

from shipyard.errors import RouterError
from shipyard.router.dataplane.tls import build_context
from shipyard.router.table import TableTls

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
