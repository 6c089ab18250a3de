"""The token check in front of every non-public route, and the audit entry for a wrong
token. Kept apart so that the one place that decides "who may call this" is easy to read."""

from __future__ import annotations

import hmac
import time
from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse

from shipyard.auditing import UNKNOWN_ACTOR, RejectionThrottle
from shipyard.engine.queries import Queries


class Api(Protocol):
    """What a rejection needs of the API context (common.Api; a Protocol so this module, which
    common.py imports, does not import it back)."""

    throttle: RejectionThrottle

    @property
    def store(self) -> Queries: ...

ACTOR_HEADER = "X-Shipyard-Actor"
"""Who the CLI runs as (user@host); the audit log adds which token vouched for it."""


def claimed_actor(request: Request) -> str:
    """The X-Shipyard-Actor header, cleaned for the log (it is what the client says, not proof)."""
    raw = request.headers.get(ACTOR_HEADER, "")
    return "".join(c for c in raw if c.isprintable())[:100].strip() or UNKNOWN_ACTOR


def authorized(request: Request, token: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed byte by byte from timings."""
    got = request.headers.get("authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())


def reject(api: Api, request: Request) -> JSONResponse:
    """Audit a refused credential (throttled per address, so a flood cannot fill the log) and answer 401."""
    address = request.client.host if request.client else "unknown"
    suppressed = api.throttle.admit(address, time.monotonic())
    if suppressed is not None:
        presented = "wrong" if request.headers.get("authorization") else "no"
        api.store.audit.record("token.rejected", actor=f"unauthenticated client at {address}",
                               why=f"{presented} API token on {request.method} {request.url.path}",
                               evidence={"address": address, "method": request.method, "path": request.url.path,
                                         "claimed_actor": claimed_actor(request),
                                         "rejected_since_last": suppressed})
    return JSONResponse({"error": "missing or wrong API token",
                         "hint": "the CLI reads it from the state directory (--state-dir)",
                         "kind": "Unauthorized"}, status_code=401)
