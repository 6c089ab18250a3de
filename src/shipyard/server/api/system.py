"""The daemon itself: liveness (public), Prometheus metrics (public) and shutdown."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shipyard import __version__
from shipyard.server.api.common import Api, route
from shipyard.server.metrics_export import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shipyard.server.metrics_export import render as render_metrics


@route("/v1/ping", public=True)
async def ping(_api: Api, _: Request) -> Any:
    return {"ok": True, "version": __version__}


@route("/metrics", public=True)
async def metrics(api: Api, _: Request) -> Any:
    return Response(await render_metrics(api.controller), media_type=METRICS_CONTENT_TYPE)


@route("/v1/shutdown", ["POST"])
async def shutdown(api: Api, _: Request) -> Any:
    if api.on_shutdown:
        api.on_shutdown()
    return {"ok": True}
