"""The dashboard's routes, added to the API's app: the page and its assets, and two
read-only JSON endpoints. All of them are public: they show state, never secrets, and
change nothing. Promote / abort / rollback go to the API's own POST routes, which keep
asking for the token."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from shipyard.engine.controller import Controller
from shipyard.errors import NotFoundError, ShipyardError, SpecError
from shipyard.server.dashboard.views import hosts_view, series_view, service_view, services_view
from shipyard.server.params import number_param

ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    # the page holds the token in sessionStorage: nothing but our own files may run in it
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
}


def dashboard_routes(controller: Controller) -> list[Route]:
    async def page(request: Request) -> Response:
        name = request.path_params.get("asset", "index.html") or "index.html"
        if name not in ASSETS:
            return JSONResponse({"error": f"no dashboard file {name!r}", "hint": None, "kind": "NotFoundError"},
                                status_code=404)
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(body, media_type=ASSETS[name], headers=SECURITY_HEADERS)

    async def to_page(_: Request) -> Response:
        return RedirectResponse("/dashboard/", status_code=308)

    async def services(_: Request) -> Response:
        return JSONResponse({"now": time.time(), "services": await services_view(controller),
                             "hosts": hosts_view(controller)})

    async def one_service(request: Request) -> Response:
        return await _answer(lambda: service_view(controller, request.path_params["name"]))

    async def series(request: Request) -> Response:
        q = request.query_params
        name = q.get("service") or ""

        async def read() -> dict[str, Any]:
            if not name:
                raise SpecError("series needs ?service=NAME")
            since = int(number_param(request, "since", 0.0))   # a unix time in seconds
            return series_view(controller, name, since, time.time())
        return await _answer(read)

    return [
        Route("/dashboard", to_page),
        Route("/dashboard/", page),
        Route("/dashboard/{asset}", page),
        Route("/v1/dashboard/services", services),
        Route("/v1/dashboard/services/{name}", one_service),
        Route("/v1/dashboard/series", series),
    ]


async def _answer(read: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
    try:
        return JSONResponse(await read())
    except NotFoundError as e:
        return JSONResponse({"error": e.message, "hint": e.hint, "kind": "NotFoundError"}, status_code=404)
    except ShipyardError as e:
        return JSONResponse({"error": e.message, "hint": e.hint, "kind": type(e).__name__}, status_code=400)
