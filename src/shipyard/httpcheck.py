"""One rule for "does this release answer as expected", shared by the blue-green preview
checks (through the router) and the database compatibility gate (straight to an instance)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import httpx

from shipyard.spec.strategy import PreviewCheck

CHECK_TIMEOUT = 10.0


async def run_checks(client: httpx.AsyncClient, checks: Sequence[PreviewCheck], *, label: str,
                     extra_headers: Mapping[str, str] | None = None,
                     log: Callable[[str], None] | None = None) -> str | None:
    """None when every check passes, else the first failure in words ("... on <label> ...")."""
    for c in checks:
        headers = dict(c.headers or {})
        headers.update(extra_headers or {})
        what = f"{c.method} {c.path}"
        try:
            resp = await client.request(c.method, c.path, headers=headers)
        except httpx.HTTPError as e:
            return f"check {what} on {label} failed: {type(e).__name__}: {e}"
        if resp.status_code != c.expect_status:
            body = resp.text.strip().replace("\n", " ")[:200]
            return (f"check {what} on {label} answered {resp.status_code}, expected {c.expect_status}"
                    + (f": {body}" if body else ""))
        if c.expect_body_contains and c.expect_body_contains not in resp.text:
            return f"check {what} on {label}: body does not contain {c.expect_body_contains!r}"
        if log:
            log(f"check {what} on {label} -> {resp.status_code} ok")
    return None
