"""What every resource module of the API shares: the context handlers run in (`Api`), the
route declaration, the JSON body reader, the audited-change wrapper and the error mapping.
Handlers are plain module-level functions of (api, request) so each resource reads alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from shipyard.auditing import RejectionThrottle
from shipyard.engine.controller import Controller
from shipyard.engine.queries import Queries
from shipyard.errors import (
    ConflictError,
    NotFoundError,
    RequestTooLarge,
    ShipyardError,
    SpecError,
    StoreUnavailable,
)
from shipyard.rollout.model import Rollout
from shipyard.server.api.auth import authorized, claimed_actor, reject
from shipyard.spec import SERVICE_NAME_PATTERN, is_service_name

STATUS = {SpecError: 400, ConflictError: 409, NotFoundError: 404, RequestTooLarge: 413, StoreUnavailable: 503}
"""503: the state database is full, locked or failing; nothing was changed and the daemon retries."""
MAX_BODY_BYTES = 1024 * 1024
"""Bodies are small JSON objects (a spec travels as its path): 1 MiB is far more than any needs."""
EXIT_HEADER = "X-Shipyard-Exit"
"""With `Accept: text/plain`, the exit code the CLI should end with."""


@dataclass
class Api:
    """The daemon-side state every handler may use; one per app."""

    controller: Controller
    token: str
    on_shutdown: Callable[[], None] | None = None
    throttle: RejectionThrottle = field(default_factory=RejectionThrottle)

    @property
    def store(self) -> Queries:
        """What the API reads (engine/queries.py), never the engine's store itself."""
        return self.controller.queries

    @property
    def token_id(self) -> str:
        """A short, non-secret name for the token, so audit entries say which one vouched."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:8]

    def actor(self, request: Request) -> str:
        return f"{claimed_actor(request)} via token {self.token_id}"

    def active_id(self, service: str) -> str | None:
        rs = self.store.active_rollouts(service)
        return rs[-1].id if rs else None

    async def audited(self, request: Request, action: str, service: str | None,
                      call: Callable[[], Awaitable[Any]], why: str, rollout_id: str | None = None,
                      **evidence: Any) -> Any:
        """Carry out a change with its audit entry (written before its first consequence)."""
        pending = self.store.audit.begin(action, actor=self.actor(request), service=service, why=why,
                                         rollout_id=rollout_id,
                                         evidence={k: v for k, v in evidence.items() if v not in (None, "", [])})
        try:
            result = await call()
        except BaseException as e:
            with contextlib.suppress(StoreUnavailable):   # the caller is told why it failed, not that this did
                self.store.audit.finish(pending, failed=e.message if isinstance(e, ShipyardError) else repr(e))
            raise
        self.store.audit.finish(pending, result.id if isinstance(result, Rollout) else None)
        return result


Handler = Callable[[Api, Request], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """A route declared by a resource module, bound to an `Api` by `create_app`."""

    path: str
    methods: list[str]
    public: bool
    fn: Handler

    def bind(self, api: Api) -> Route:
        async def endpoint(request: Request) -> Response:
            if not self.public and not authorized(request, api.token):
                return reject(api, request)
            try:
                _check_name(request)
                result = await self.fn(api, request)
            except ShipyardError as e:
                return error_response(e, wants_text(request))
            return result if isinstance(result, Response) else JSONResponse(result)
        return Route(self.path, endpoint, methods=self.methods)


def route(path: str, methods: list[str] | None = None, public: bool = False) -> Callable[[Handler], Endpoint]:
    def wrap(fn: Handler) -> Endpoint:
        return Endpoint(path, methods or ["GET"], public, fn)
    return wrap


def error_response(e: ShipyardError, plain: bool = False) -> Response:
    code = next((c for t, c in STATUS.items() if isinstance(e, t)), 422)
    if plain:   # the CLI's fast path prints this as is and exits with the given code
        text = f"error: {e.message}\n" + (f"  hint: {e.hint}\n" if e.hint else "")
        return PlainTextResponse(text, status_code=code, headers={EXIT_HEADER: str(e.exit_code)})
    return JSONResponse({"error": e.message, "hint": e.hint, "kind": type(e).__name__}, status_code=code)


def wants_text(request: Request) -> bool:
    return request.headers.get("accept") == "text/plain"


def _check_name(request: Request) -> None:
    """A service name in the path follows the spec's rule, so no handler ever sees another."""
    name = request.path_params.get("name")
    if name is not None and not is_service_name(name):
        raise SpecError(f"{json.dumps(name)[:100]} is not a valid service name",
                        f"service names match {SERVICE_NAME_PATTERN} (lowercase letters, digits, dashes)")


def _too_large(size: str) -> RequestTooLarge:
    return RequestTooLarge(f"the request body is {size} bytes; the API accepts at most {MAX_BODY_BYTES} "
                           "bytes (1 MiB)", "send the spec's path (spec_path), not its content")


async def body(request: Request) -> dict[str, Any]:
    """The JSON object of the body, read at most MAX_BODY_BYTES far (Content-Length can lie or be absent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(declared)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(f"more than {MAX_BODY_BYTES}")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise SpecError("request body must be a JSON object")
    return data


def spec_path(data: dict[str, Any], verb: str) -> str:
    path = data.get("spec_path")
    if not isinstance(path, str) or not path:
        raise SpecError(f"{verb} needs spec_path: the absolute path of the spec file")
    return path


def unsafe_reason(data: dict[str, Any]) -> str:
    reason = data.get("allow_unsafe") or ""
    if not isinstance(reason, str):
        raise SpecError("allow_unsafe must be a string: the reason, for the audit log")
    return reason.strip()
