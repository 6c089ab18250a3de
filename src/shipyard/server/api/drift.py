"""Drift: the last report of a service, and a new scan (optionally fixing what it finds)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.errors import SpecError
from shipyard.server.api.common import Api, body, route


@route("/v1/services/{name}/drift")
async def drift_last(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    api.controller.queries.status(name)                      # 404 for an unknown service
    return {"report": api.controller.queries.get_drift_report(name), "enforcement": api.controller.queries.enforcement()}


@route("/v1/services/{name}/drift", ["POST"])
async def drift_scan(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    data = await body(request)
    mode = data.get("mode", "metadata")
    if mode not in ("metadata", "full"):
        raise SpecError(f"drift mode must be metadata or full, not {mode!r}")
    controller = api.controller
    if data.get("fix"):
        actor = api.actor(request)
        result = await api.audited(request, "drift.fix", name, lambda: controller.drift.fix(name, mode, actor),
                                   f"drift --fix ({mode} scan)")
        return result | {"enforcement": controller.queries.enforcement()}
    report = await controller.drift.scan(name, mode)
    return {"report": report.to_dict(), "enforcement": controller.queries.enforcement()}
