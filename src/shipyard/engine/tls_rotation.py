"""A deploy's certificate becoming the served one: rotation is a table swap, pushed as the
deploy begins (before any instance starts), with an event saying what changed; and what
`plan` says about it. The certificate was checked (engine/edge.check) before this runs."""

from __future__ import annotations

import asyncio

from shipyard.certificates import Certificate, iso
from shipyard.engine import edge
from shipyard.engine.actions import SlotOps
from shipyard.errors import ShipyardError
from shipyard.paths import StatePaths
from shipyard.rollout.changes import Change
from shipyard.spec import Spec


async def serve_certificate(ops: SlotOps, spec: Spec, cert: Certificate | None) -> None:
    """Record the spec's certificate as the service's and, when that changes what its router
    serves, push the table now. A router that refuses it (its copy cannot be loaded) stops
    the deploy with the record as it was."""
    d = ops.d
    previous = edge.served(d.paths, spec.service)
    now = await asyncio.to_thread(edge.record, d.paths, spec, cert)
    if edge.table_tls(now) == edge.table_tls(previous):
        return
    async with ops.lock(spec.service):
        svc = d.store.get_service(spec.service)
        if svc is not None:
            try:
                await ops.push_table(svc)
            except ShipyardError:
                edge.restore(d.paths, spec.service, previous)
                raise
    if previous is not None and now is not None:
        ops.event(spec.service, "tls.rotated",
                  f"serving certificate {now.fingerprint[:16]}... (until {iso(now.not_after)}) "
                  f"instead of {previous.fingerprint[:16]}...",
                  fingerprint=now.fingerprint, previous=previous.fingerprint, not_after=now.not_after)
    elif now is not None:
        ops.event(spec.service, "tls.enabled", f"serving TLS with certificate {now.fingerprint[:16]}... "
                  f"(until {iso(now.not_after)})", fingerprint=now.fingerprint, not_after=now.not_after)
    else:
        ops.event(spec.service, "tls.disabled", "the spec has no tls section: serving plain HTTP")


def certificate_change(paths: StatePaths, service: str, cert: Certificate | None) -> Change | None:
    """The plan line for a certificate other than the served one (None: the same, or no tls)."""
    served = edge.served(paths, service)
    if cert is None or (served is not None and served.fingerprint == cert.fingerprint):
        return None
    old = served.fingerprint if served else None
    return Change("tls", f"tls certificate {old[:16] + '...' if old else 'none'} -> {cert.fingerprint[:16]}... "
                  "(served to new connections once the deploy begins)", "tls.cert", old=old, new=cert.fingerprint)
