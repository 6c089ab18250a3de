"""Fleet hosts: every host of every stored fleet service as it is now (`shipyard hosts`), and
whether each host of one service could run it (`shipyard hosts check SERVICE`). The Host
*header* policy of the API is hosts.py; this module is about the machines of a fleet."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from shipyard.errors import SpecError
from shipyard.server.api.common import Api, body, route
from shipyard.spec import SERVICE_NAME_PATTERN, is_service_name


@route("/v1/hosts")
async def hosts_list(api: Api, request: Request) -> Any:
    return await api.store.hosts.hosts(api.actor(request))


@route("/v1/hosts/check", ["POST"])
async def hosts_check(api: Api, request: Request) -> Any:
    data = await body(request)
    service = data.get("service")
    if not isinstance(service, str) or not service:
        raise SpecError("hosts check needs service: the name of a fleet service", "shipyard hosts check SERVICE")
    if not is_service_name(service):
        raise SpecError(f"{json.dumps(service)[:100]} is not a valid service name",
                        f"service names match {SERVICE_NAME_PATTERN} (lowercase letters, digits, dashes)")
    api.store.status(service)                    # 404 for an unknown service, before any audit entry
    # audited: a check installs the helper and ships the image to hosts that lack them
    return await api.audited(request, "hosts.check", service, lambda: api.store.hosts.check(service, api.actor(request)),
                             "hosts check (SSH, python3, helper, disk, ports, image on every host)")


@route("/v1/hosts/{host}")
async def host_state(api: Api, request: Request) -> Any:
    """One host's state and the instances the store has on it (no SSH: what `hosts drain` polls)."""
    return api.controller.host_states.show(request.path_params["host"])


async def _held(api: Api, request: Request, verb: str, why: str) -> Any:
    host = request.path_params["host"]
    shown = api.controller.host_states.show(host)        # 404 for an unknown host, before any audit entry
    call = getattr(api.controller.host_states, verb)

    async def run() -> Any:
        return call(host)
    return await api.audited(request, f"hosts.{verb}", None, run, f"hosts {verb} {shown['name']}: {why}",
                             host=shown["name"], address=shown["address"], services=shown["services"])


@route("/v1/hosts/{host}/drain", ["POST"])
async def host_drain(api: Api, request: Request) -> Any:
    return await _held(api, request, "drain", "nothing new on it; its instances moved to other hosts")


@route("/v1/hosts/{host}/undrain", ["POST"])
async def host_undrain(api: Api, request: Request) -> Any:
    return await _held(api, request, "undrain", "it takes instances again")


@route("/v1/hosts/{host}/remove", ["POST"])
async def host_remove(api: Api, request: Request) -> Any:
    return await _held(api, request, "remove", "empty; it takes nothing though the spec may still list it")
