"""host.key_trusted: the one audit path for a host key first trusted under
fleet.ssh.trust_new_hosts, whichever SSH connection met it (the runtime's, which deploys and
watches instances, or a `hosts` / `hosts check` report's). The adapters call a KeyTrustAudit
back when they write a key to known_hosts; who caused the connection comes from `asked_by`
(a context variable, so it follows the asyncio tasks a request starts and nothing else):
the requester for a report, the daemon itself for background work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from shipyard.engine.ports import AuditTrail

DAEMON = "shipyard-daemon"
_asker: ContextVar[tuple[str, str | None]] = ContextVar("shipyard_key_trust_asker", default=(DAEMON, None))


class TrustedKeyFact(Protocol):
    """What an adapter tells about a key it trusted (runtime/ssh/hostkeys.TrustedKey is one)."""

    host: str
    address: str
    port: int
    key_type: str
    fingerprint: str
    known_hosts: str


@contextmanager
def asked_by(actor: str, service: str | None) -> Iterator[None]:
    """Connections opened inside (and in tasks started inside) are on behalf of `actor`, for `service`."""
    token = _asker.set((actor, service))
    try:
        yield
    finally:
        _asker.reset(token)


class KeyTrustAudit:
    """The callback every SSH adapter gets as `on_trust`."""

    def __init__(self, audit: AuditTrail) -> None:
        self._audit = audit

    def __call__(self, key: TrustedKeyFact) -> None:
        actor, service = _asker.get()
        self._audit.record(
            "host.key_trusted", actor=actor, service=service,
            evidence={"host": key.host, "address": key.address, "port": key.port, "key_type": key.key_type,
                      "fingerprint": key.fingerprint, "known_hosts": key.known_hosts},
            why=f"first contact with {key.host} ({key.address}:{key.port}) under fleet.ssh.trust_new_hosts: "
                f"{key.key_type} key {key.fingerprint} added to {key.known_hosts}")


__all__ = ["DAEMON", "KeyTrustAudit", "TrustedKeyFact", "asked_by"]
