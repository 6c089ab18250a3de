"""Preview checks: real requests sent through the router's preview route
(`X-Shipyard-Track: <slot>` with the service's `X-Shipyard-Preview-Token`), so the new
slot is tested on the same path users take, and users cannot take it."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from shipyard.engine.ports import HealthProbe
from shipyard.router.table import PREVIEW_TOKEN_HEADER, TRACK_HEADER
from shipyard.spec import Spec


def connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def preview_host(spec: Spec) -> str | None:
    """The Host (and TLS server name) the preview checks send, so that on an address shared by
    domains they reach this service: its first exact name, else a name under its first
    wildcard; None for a service that takes every host."""
    if not spec.domains:
        return None
    exact = [d for d in spec.domains if not d.startswith("*.")]
    return exact[0] if exact else "shipyard-preview" + spec.domains[0][1:]


def base_url(spec: Spec, scheme: str = "http") -> str:
    host = connect_host(spec.listen_host)
    return f"{scheme}://[{host}]:{spec.listen_port}" if ":" in host else f"{scheme}://{host}:{spec.listen_port}"


async def run_preview_checks(spec: Spec, slot: str, log: Callable[[str], None], health: HealthProbe,
                             token: str, trust: ssl.SSLContext | None = None) -> str | None:
    """None when every check passes, else the first failure in words. `trust`: the router's
    listener speaks TLS, and this (its certificate, pinned) is how the checks verify it."""
    bg = spec.strategy.blue_green
    checks = list(bg.preview_checks) if bg is not None else []
    if not checks:
        log(f"no preview checks configured for slot {slot}")
        return None
    scheme = "https" if trust is not None else "http"
    headers = {TRACK_HEADER: slot, PREVIEW_TOKEN_HEADER: token}
    if (host := preview_host(spec)) is not None:
        headers["Host"] = host
    failure = await health.run_checks(base_url(spec, scheme), checks, label=f"slot {slot}",
                                      extra_headers=headers, log=log,
                                      **({"trust": trust} if trust is not None else {}))
    return None if failure is None else f"preview {failure}"
