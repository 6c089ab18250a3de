"""The service's TLS edge as the engine sees it: the certificate a spec asks for, checked
before a deploy changes anything, and the one its router serves now.

What a service serves is recorded in the state directory (certificates.py), not with a
slot: the certificate belongs to the address, which both slots and the preview route
share, so a new one is served as soon as its deploy begins (a table swap), and a rollback
does not bring an old, possibly revoked, certificate back."""

from __future__ import annotations

import ssl
import time

from shipyard.certificates import (
    Certificate,
    ServiceTls,
    expiry_warning,
    install,
    load_service,
    pinned_client_context,
    read_pair,
    save_service,
)
from shipyard.paths import StatePaths
from shipyard.router.table import TableTls
from shipyard.spec import Spec


def check(spec: Spec, now: float | None = None) -> tuple[Certificate | None, list[str]]:
    """Read and check the spec's certificate (CertificateError if it cannot be served) and the
    warnings it deserves; (None, []) for a spec without tls. Blocking file I/O: run in a thread."""
    if spec.tls is None:
        return None, []
    cert = read_pair(spec.resolve_path(spec.tls.cert), spec.resolve_path(spec.tls.key), now)
    warning = expiry_warning(cert, now)
    return cert, [warning] if warning else []


def served(paths: StatePaths, service: str) -> ServiceTls | None:
    return load_service(paths.tls, service)


def record(paths: StatePaths, spec: Spec, cert: Certificate | None) -> ServiceTls | None:
    """Install `cert` (checked by `check`) and record it as what `spec.service` serves; None
    (and the record removed) for a spec without tls."""
    if cert is None or spec.tls is None:
        save_service(paths.tls, spec.service, None)
        return None
    cert_path, key_path = install(cert, paths.tls)
    tls = ServiceTls(cert.fingerprint, str(cert_path), str(key_path), cert.not_before, cert.not_after,
                     cert.names, spec.tls.redirect_http)
    save_service(paths.tls, spec.service, tls)
    return tls


def restore(paths: StatePaths, service: str, previous: ServiceTls | None) -> None:
    """Put the record back as it was before a deploy that could not go on."""
    save_service(paths.tls, service, previous)


def table_tls(tls: ServiceTls | None) -> TableTls | None:
    return TableTls(tls.cert, tls.key, tls.fingerprint) if tls is not None else None


def redirect_of(paths: StatePaths, service: str) -> str | None:
    tls = served(paths, service)
    return tls.redirect_http if tls is not None else None


def preview_trust(paths: StatePaths, service: str, server_name: str | None = None) -> ssl.SSLContext | None:
    """How the preview checks verify the router's TLS listener (None: it speaks plain HTTP).
    With `server_name` (an address shared by domains) the handshake names it (SNI), so the
    router answers with this service's certificate, the one pinned."""
    tls = served(paths, service)
    if tls is None:
        return None
    ctx = pinned_client_context(tls)
    if server_name is not None:
        ctx.__class__ = _NamedContext      # same context, every handshake sends `server_name`
        ctx.server_name = server_name      # type: ignore[attr-defined]
    return ctx


class _NamedContext(ssl.SSLContext):
    """A client context whose handshakes send one fixed server name (the checks connect to the
    listen address, an IP, for which no name would be sent)."""

    server_name: str

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,  # type: ignore[no-untyped-def, override]
                    suppress_ragged_eofs=True, server_hostname=None, session=None):
        return super().wrap_socket(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
                                   self.server_name, session)

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None,  # type: ignore[no-untyped-def, override]
                 session=None):
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name, session)


def status(tls: ServiceTls | None, now: float | None = None) -> dict[str, object] | None:
    """What `shipyard status` shows of the edge."""
    if tls is None:
        return None
    now = time.time() if now is None else now
    d = tls.to_dict()
    return {"fingerprint": d["fingerprint"], "not_after": d["not_after"], "not_after_iso": d["not_after_iso"],
            "days_left": round((tls.not_after - now) / 86400, 1), "names": d["names"],
            "redirect_http": d["redirect_http"]}
