"""What happened: a service's rollout history and the audit log."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.server.api.common import Api, route
from shipyard.server.params import int_param

MAX_AUDIT_LIMIT = 10_000
MAX_HISTORY_LIMIT = 10_000


@route("/v1/services/{name}/history")
async def history(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    limit = min(int_param(request, "limit", 50), MAX_HISTORY_LIMIT)    # a bad value is a 400 even if unknown
    api.controller.queries.status(name)
    return {"rollouts": [r.to_dict() for r in api.store.rollouts(name, limit)]}


@route("/v1/audit")
async def audit(api: Api, request: Request) -> Any:
    q = request.query_params
    limit, since = min(int_param(request, "limit", 100), MAX_AUDIT_LIMIT), int_param(request, "since", 0)
    entries = api.store.audit.entries(q.get("service") or None, limit, since)
    return {"audit": [e.to_dict() for e in entries]}
