"""Services: list, status, remove, and what they wrote (logs, events)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from shipyard.launching import log_tail
from shipyard.server.api.common import Api, route
from shipyard.server.params import int_param

MAX_LOG_LINES = 10_000


@route("/v1/services")
async def services(api: Api, _: Request) -> Any:
    return {"services": api.controller.queries.services()}


@route("/v1/services/{name}")
async def service(api: Api, request: Request) -> Any:
    return api.controller.queries.status(request.path_params["name"])


@route("/v1/services/{name}", ["DELETE"])
async def remove(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    await api.audited(request, "remove", name, lambda: api.controller.remove(name), f"remove service {name}",
                      api.active_id(name))
    return {"ok": True}


@route("/v1/services/{name}/events")
async def events(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    since = int_param(request, "since", 0)
    return {"events": [e.to_dict() for e in api.store.events(service=name, since=since)]}


@route("/v1/services/{name}/logs")
async def logs(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    lines = min(int_param(request, "lines", 100), MAX_LOG_LINES)
    api.controller.queries.status(name)
    only = request.query_params.get("instance")
    chosen = [(inst, status) for inst, status in api.store.instances(name, live_only=not request.query_params.get("all"))
              if not only or inst.id == only]
    remote = await asyncio.gather(*(api.controller.queries.host_log(inst, lines) for inst, _ in chosen))
    return {"logs": [{"instance": inst.id, "slot": inst.slot, "status": status,
                      "log": log_tail(inst.log_path, lines) if text is None else text}
                     for (inst, status), text in zip(chosen, remote, strict=True)]}
