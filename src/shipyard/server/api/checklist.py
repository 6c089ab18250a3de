"""The pre-deploy checklist, for one service or all of them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.checklist import REFERENCE_RATE
from shipyard.server.api.common import Api, route
from shipyard.server.params import number_param

MIN_RATE, MAX_RATE = 1e-6, 1e9


def _rate(request: Request) -> float:
    """`?rate=`: the request rate (per second) the Blast-radius test assumes."""
    return number_param(request, "rate", REFERENCE_RATE, MIN_RATE, MAX_RATE,
                        wanted=f"a positive number of requests per second (at most {MAX_RATE:g})")



@route("/v1/services/{name}/checklist")
async def checklist_one(api: Api, request: Request) -> Any:
    from shipyard.engine.queries import checklist
    return await checklist(api.controller, request.path_params["name"], _rate(request))


@route("/v1/checklist")
async def checklist_all(api: Api, request: Request) -> Any:
    from shipyard.engine.queries import checklist
    rate = _rate(request)
    return {"services": [await checklist(api.controller, s.name, rate) for s in api.store.list_services()]}
