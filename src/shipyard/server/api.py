"""The HTTP API the CLI (and later the dashboard) talks to. Every route but /v1/ping
needs the bearer token from the state directory. ShipyardErrors become JSON bodies
{"error", "hint", "kind"} with a status that says what kind of failure it was."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from shipyard import __version__
from shipyard.errors import ConflictError, NotFoundError, ShipyardError, SpecError
from shipyard.rollout.controller import Controller
from shipyard.rollout.model import outcome_line
from shipyard.runtime.local import log_tail

STATUS = {SpecError: 400, ConflictError: 409, NotFoundError: 404}
EXIT_HEADER = "X-Shipyard-Exit"
"""With `Accept: text/plain`, the exit code the CLI should end with."""

Handler = Callable[[Request], Awaitable[Any]]


def error_response(e: ShipyardError, plain: bool = False) -> Response:
    code = next((c for t, c in STATUS.items() if isinstance(e, t)), 422)
    if plain:   # the CLI's fast path prints this as is and exits with the given code
        text = f"error: {e.message}\n" + (f"  hint: {e.hint}\n" if e.hint else "")
        return PlainTextResponse(text, status_code=code, headers={EXIT_HEADER: str(e.exit_code)})
    return JSONResponse({"error": e.message, "hint": e.hint, "kind": type(e).__name__}, status_code=code)


def wants_text(request: Request) -> bool:
    return request.headers.get("accept") == "text/plain"


def create_app(controller: Controller, token: str, on_shutdown: Callable[[], None] | None = None) -> Starlette:
    store = controller.d.store

    def route(path: str, methods: list[str] | None = None, public: bool = False):
        def wrap(fn: Handler) -> Route:
            async def endpoint(request: Request) -> Response:
                if not public and not _authorized(request, token):
                    return JSONResponse({"error": "missing or wrong API token",
                                         "hint": "the CLI reads it from the state directory (--state-dir)",
                                         "kind": "Unauthorized"}, status_code=401)
                try:
                    result = await fn(request)
                except ShipyardError as e:
                    return error_response(e, wants_text(request))
                return result if isinstance(result, Response) else JSONResponse(result)
            return Route(path, endpoint, methods=methods or ["GET"])
        return wrap

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise SpecError("request body must be a JSON object")
        return data

    @route("/v1/ping", public=True)
    async def ping(_: Request) -> Any:
        return {"ok": True, "version": __version__}

    @route("/v1/services")
    async def services(_: Request) -> Any:
        return {"services": controller.services()}

    @route("/v1/services/{name}")
    async def service(request: Request) -> Any:
        return controller.status(request.path_params["name"])

    @route("/v1/services/{name}", ["DELETE"])
    async def remove(request: Request) -> Any:
        await controller.remove(request.path_params["name"])
        return {"ok": True}

    @route("/v1/services/{name}/history")
    async def history(request: Request) -> Any:
        name = request.path_params["name"]
        controller.status(name)
        limit = int(request.query_params.get("limit", "50"))
        return {"rollouts": [r.to_dict() for r in store.rollouts(name, limit)]}

    @route("/v1/deploy", ["POST"])
    async def deploy(request: Request) -> Any:
        data = await body(request)
        path = data.get("spec_path")
        if not isinstance(path, str) or not path:
            raise SpecError("deploy needs spec_path: the absolute path of the spec file")
        allow_unsafe = data.get("allow_unsafe") or ""
        if not isinstance(allow_unsafe, str):
            raise SpecError("allow_unsafe must be a string: the reason, for the audit log")
        r = await controller.deploy(path, image_id=data.get("image"), allow_unsafe=allow_unsafe.strip())
        return JSONResponse({"rollout": r.to_dict()}, status_code=202)

    @route("/v1/db/check", ["POST"])
    async def db_check(request: Request) -> Any:
        data = await body(request)
        path = data.get("spec_path")
        if not isinstance(path, str) or not path:
            raise SpecError("db check needs spec_path: the absolute path of the spec file")
        return await controller.gate.check(path, contract=bool(data.get("contract", False)))

    @route("/v1/services/{name}/db/contract", ["POST"])
    async def db_contract(request: Request) -> Any:
        reason = (await body(request)).get("allow_unsafe") or ""
        if not isinstance(reason, str):
            raise SpecError("allow_unsafe must be a string: the reason, for the audit log")
        return await controller.gate.contract(request.path_params["name"], reason.strip())

    @route("/v1/services/{name}/promote", ["POST"])
    async def promote(request: Request) -> Any:
        full = bool((await body(request)).get("full", False))
        return {"rollout": (await controller.promote(request.path_params["name"], full=full)).to_dict()}

    @route("/v1/services/{name}/pause", ["POST"])
    async def pause(request: Request) -> Any:
        return {"rollout": (await controller.pause(request.path_params["name"])).to_dict()}

    @route("/v1/services/{name}/resume", ["POST"])
    async def resume(request: Request) -> Any:
        return {"rollout": (await controller.resume(request.path_params["name"])).to_dict()}

    @route("/v1/services/{name}/abort", ["POST"])
    async def abort(request: Request) -> Any:
        return {"rollout": (await controller.abort(request.path_params["name"])).to_dict()}

    @route("/v1/services/{name}/retry", ["POST"])
    async def retry(request: Request) -> Any:
        return JSONResponse({"rollout": (await controller.retry(request.path_params["name"])).to_dict()},
                            status_code=202)

    @route("/v1/services/{name}/rollback", ["POST"])
    async def rollback(request: Request) -> Any:
        r = (await controller.rollback(request.path_params["name"])).to_dict()
        if wants_text(request):
            done = r["phase"] in ("succeeded", "failed", "aborted")
            return PlainTextResponse(outcome_line(r) + "\n" if done else "", headers={
                EXIT_HEADER: "1" if r["phase"] == "failed" else "0",
                "X-Shipyard-Rollout": r["id"], "X-Shipyard-Done": "1" if done else "0"})
        return {"rollout": r}

    @route("/v1/rollouts/{rid}")
    async def rollout(request: Request) -> Any:
        rid = request.path_params["rid"]
        r = store.get_rollout(rid)
        if r is None:
            raise NotFoundError(f"no rollout {rid}")
        since = int(request.query_params.get("since", "0"))
        events = store.events(rollout_id=rid, since=since)
        return {"rollout": r.to_dict(), "events": [e.to_dict() for e in events],
                "analysis": store.get_analysis(rid) if r.strategy == "canary" else None}

    @route("/v1/services/{name}/events")
    async def events(request: Request) -> Any:
        name = request.path_params["name"]
        since = int(request.query_params.get("since", "0"))
        return {"events": [e.to_dict() for e in store.events(service=name, since=since)]}

    @route("/v1/services/{name}/logs")
    async def logs(request: Request) -> Any:
        name = request.path_params["name"]
        controller.status(name)
        lines = min(int(request.query_params.get("lines", "100")), 10000)
        only = request.query_params.get("instance")
        out = []
        for inst, status in store.instances(name, live_only=not request.query_params.get("all")):
            if only and inst.id != only:
                continue
            out.append({"instance": inst.id, "slot": inst.slot, "status": status,
                        "log": log_tail(inst.log_path, lines)})
        return {"logs": out}

    @route("/v1/images")
    async def images(request: Request) -> Any:
        svc = request.query_params.get("service")
        return {"images": [_image(i) for i in controller.d.images.list(svc)]}

    @route("/v1/shutdown", ["POST"])
    async def shutdown(_: Request) -> Any:
        if on_shutdown:
            on_shutdown()
        return {"ok": True}

    return Starlette(routes=[ping, services, service, remove, history, deploy, db_check, db_contract, promote, pause, resume, abort,
                             retry, rollback, rollout, events, logs, images, shutdown])


def _authorized(request: Request, token: str) -> bool:
    got = request.headers.get("authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())


def _image(i: Any) -> dict[str, Any]:
    return {"id": i.id, "service": i.service, "created_at": i.created_at, "files": i.files, "size": i.size,
            "command": i.command}
