"""Database migration safety: check a spec's migrations, apply held-back contract steps."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.server.api.common import Api, body, route, spec_path, unsafe_reason
from shipyard.server.api.specs import read_spec


@route("/v1/db/check", ["POST"])
async def db_check(api: Api, request: Request) -> Any:
    data = await body(request)
    path = spec_path(data, "db check")
    await read_spec(path)                       # limits checked off the event loop
    return await api.controller.gate.check(path, contract=bool(data.get("contract", False)))


@route("/v1/services/{name}/db/contract", ["POST"])
async def db_contract(api: Api, request: Request) -> Any:
    reason = unsafe_reason(await body(request))
    name = request.path_params["name"]
    return await api.audited(request, "db.contract", name,
                             lambda: api.controller.gate.contract(name, reason),
                             reason or "apply the held-back contract migrations",
                             allow_unsafe=reason)
