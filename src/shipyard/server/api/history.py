"""What happened: a service's rollout history and the audit log."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.errors import SpecError
from shipyard.server.api.common import Api, route

MAX_AUDIT_LIMIT = 10_000


@route("/v1/services/{name}/history")
async def history(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    api.controller.status(name)
    limit = int(request.query_params.get("limit", "50"))
    return {"rollouts": [r.to_dict() for r in api.store.rollouts(name, limit)]}


@route("/v1/audit")
async def audit(api: Api, request: Request) -> Any:
    q = request.query_params
    try:
        limit, since = int(q.get("limit", "100")), int(q.get("since", "0"))
    except ValueError:
        raise SpecError("limit and since must be whole numbers") from None
    entries = api.store.audit.entries(q.get("service") or None, min(max(limit, 0), MAX_AUDIT_LIMIT), since)
    return {"audit": [e.to_dict() for e in entries]}
