"""The pre-deploy checklist, for one service or all of them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.server.api.common import Api, route


@route("/v1/services/{name}/checklist")
async def checklist_one(api: Api, request: Request) -> Any:
    from shipyard.engine.queries import checklist, rate_param
    return await checklist(api.controller, request.path_params["name"], rate_param(request.query_params))


@route("/v1/checklist")
async def checklist_all(api: Api, request: Request) -> Any:
    from shipyard.engine.queries import checklist, rate_param
    rate = rate_param(request.query_params)
    return {"services": [await checklist(api.controller, s.name, rate) for s in api.store.list_services()]}
