"""Rollouts: deploy / plan a spec, drive the one in progress (promote, pause, resume,
abort, retry, rollback) and read one back with its events."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from shipyard.errors import NotFoundError, SpecError
from shipyard.rollout.model import outcome_line
from shipyard.server.api.common import EXIT_HEADER, Api, body, route, spec_path, unsafe_reason, wants_text
from shipyard.server.api.specs import checked_spec
from shipyard.server.params import int_param


@route("/v1/deploy", ["POST"])
async def deploy(api: Api, request: Request) -> Any:
    data = await body(request)
    path = spec_path(data, "deploy")
    allow_unsafe = unsafe_reason(data)
    plan = data.get("plan")      # sent by `shipyard apply`: the changes it saw, as evidence
    if plan is not None and not (isinstance(plan, list) and all(isinstance(x, str) for x in plan)):
        raise SpecError("plan must be a list of strings: the changes apply saw")
    image = data.get("image")
    _, warnings = await checked_spec(path)     # refuses a bomb or a 50 MB file without blocking the loop
    summary = f"apply {path}: " + "; ".join(plan)[:500] if plan else f"deploy {path}"
    why = allow_unsafe or summary
    r = await api.audited(request, "apply" if plan is not None else "deploy", None,
                          lambda: api.controller.deploy(path, image_id=image, allow_unsafe=allow_unsafe),
                          why, spec_path=path, image=image, allow_unsafe=allow_unsafe,
                          changes=(plan or [])[:200])
    return JSONResponse({"rollout": r.to_dict(), "warnings": warnings}, status_code=202)


@route("/v1/plan", ["POST"])
async def plan(api: Api, request: Request) -> Any:
    path = spec_path(await body(request), "plan")
    _, warnings = await checked_spec(path)
    return await api.controller.plan(path) | {"warnings": warnings}


@route("/v1/services/{name}/promote", ["POST"])
async def promote(api: Api, request: Request) -> Any:
    full = bool((await body(request)).get("full", False))
    name = request.path_params["name"]
    why = "promote to 100 %, skipping the remaining steps" if full else "promote"
    r = await api.audited(request, "promote", name, lambda: api.controller.promote(name, full=full), why,
                          api.active_id(name), full=full)
    return {"rollout": r.to_dict()}


@route("/v1/services/{name}/pause", ["POST"])
async def pause(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    return {"rollout": (await api.audited(request, "pause", name, lambda: api.controller.pause(name),
                                          "hold the canary's weight", api.active_id(name))).to_dict()}


@route("/v1/services/{name}/resume", ["POST"])
async def resume(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    return {"rollout": (await api.audited(request, "resume", name, lambda: api.controller.resume(name),
                                          "continue after pause", api.active_id(name))).to_dict()}


@route("/v1/services/{name}/abort", ["POST"])
async def abort(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    return {"rollout": (await api.audited(request, "abort", name, lambda: api.controller.abort(name),
                                          "aborted by user", api.active_id(name))).to_dict()}


@route("/v1/services/{name}/retry", ["POST"])
async def retry(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    r = await api.audited(request, "retry", name, lambda: api.controller.retry(name),
                          "retry the last failed deploy")
    return JSONResponse({"rollout": r.to_dict()}, status_code=202)


@route("/v1/services/{name}/rollback", ["POST"])
async def rollback(api: Api, request: Request) -> Any:
    name = request.path_params["name"]
    r = (await api.audited(request, "rollback", name, lambda: api.controller.rollback(name),
                           "roll back to the previous release", api.active_id(name))).to_dict()
    if wants_text(request):
        done = r["phase"] in ("succeeded", "failed", "aborted")
        return PlainTextResponse(outcome_line(r) + "\n" if done else "", headers={
            EXIT_HEADER: "1" if r["phase"] == "failed" else "0",
            "X-Shipyard-Rollout": r["id"], "X-Shipyard-Done": "1" if done else "0"})
    return {"rollout": r}


@route("/v1/rollouts/{rid}")
async def rollout(api: Api, request: Request) -> Any:
    rid = request.path_params["rid"]
    since = int_param(request, "since", 0)
    r = api.store.get_rollout(rid)
    if r is None:
        raise NotFoundError(f"no rollout {rid}")
    events = api.store.events(rollout_id=rid, since=since)
    return {"rollout": r.to_dict(), "events": [e.to_dict() for e in events],
            "analysis": api.store.get_analysis(rid) if r.strategy == "canary" else None}
