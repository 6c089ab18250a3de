"""Preview checks: real requests sent through the router's preview route
(`X-Shipyard-Track: <slot>`), so the new slot is tested on the same path users take."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from shipyard.router.table import TRACK_HEADER
from shipyard.spec import Spec

PREVIEW_TIMEOUT = 10.0


def connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def base_url(spec: Spec) -> str:
    host = connect_host(spec.listen_host)
    return f"http://[{host}]:{spec.listen_port}" if ":" in host else f"http://{host}:{spec.listen_port}"


async def run_preview_checks(spec: Spec, slot: str, log: Callable[[str], None]) -> str | None:
    """None when every check passes, else the first failure in words."""
    bg = spec.strategy.blue_green
    checks = list(bg.preview_checks) if bg is not None else []
    if not checks:
        log(f"no preview checks configured for slot {slot}")
        return None
    async with httpx.AsyncClient(base_url=base_url(spec), timeout=PREVIEW_TIMEOUT) as client:
        for c in checks:
            headers = dict(c.headers or {})
            headers[TRACK_HEADER] = slot
            what = f"{c.method} {c.path}"
            try:
                resp = await client.request(c.method, c.path, headers=headers)
            except httpx.HTTPError as e:
                return f"preview check {what} on slot {slot} failed: {type(e).__name__}: {e}"
            if resp.status_code != c.expect_status:
                body = resp.text.strip().replace("\n", " ")[:200]
                return (f"preview check {what} on slot {slot} answered {resp.status_code}, "
                        f"expected {c.expect_status}" + (f": {body}" if body else ""))
            if c.expect_body_contains and c.expect_body_contains not in resp.text:
                return f"preview check {what} on slot {slot}: body does not contain {c.expect_body_contains!r}"
            log(f"preview check {what} on slot {slot} -> {resp.status_code} ok")
    return None
