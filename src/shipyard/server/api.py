"""The HTTP API the CLI (and later the dashboard) talks to. Every route but /v1/ping
needs the bearer token from the state directory. ShipyardErrors become JSON bodies
{"error", "hint", "kind"} with a status that says what kind of failure it was.
Every change asked for here goes into the audit log with its actor, and so does every
request with a wrong token."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from shipyard import __version__
from shipyard.errors import ConflictError, NotFoundError, ShipyardError, SpecError
from shipyard.rollout.controller import Controller
from shipyard.rollout.model import Rollout
from shipyard.runtime.local import log_tail
from shipyard.server.dashboard.routes import dashboard_routes
from shipyard.server.metrics_export import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shipyard.server.metrics_export import render as render_metrics
from shipyard.state.audit import UNKNOWN_ACTOR, RejectionThrottle

STATUS = {SpecError: 400, ConflictError: 409, NotFoundError: 404}
EXIT_HEADER = "X-Shipyard-Exit"
"""With `Accept: text/plain`, the exit code the CLI should end with."""
ACTOR_HEADER = "X-Shipyard-Actor"
"""Who the CLI runs as (user@host); the audit log adds which token vouched for it."""
MAX_AUDIT_LIMIT = 10_000

Handler = Callable[[Request], Awaitable[Any]]


def error_response(e: ShipyardError, plain: bool = False) -> Response:
    code = next((c for t, c in STATUS.items() if isinstance(e, t)), 422)
    if plain:   # the CLI's fast path prints this as is and exits with the given code
        text = f"error: {e.message}\n" + (f"  hint: {e.hint}\n" if e.hint else "")
        return PlainTextResponse(text, status_code=code, headers={EXIT_HEADER: str(e.exit_code)})
    return JSONResponse({"error": e.message, "hint": e.hint, "kind": type(e).__name__}, status_code=code)


def rollback_text(r: dict[str, Any]) -> str:
    """The plain-text answer to a finished rollback, which bin/shipyard and cli/entry.py print:
    the same line as the CLI's `shipyard.cli.plaintext.outcome_line` (the daemon must not
    import the CLI, which imports server.daemon for `serve`)."""
    return f"{r['kind']} {r['id']}: {r['phase']}" + (f" ({r['reason']})" if r.get("reason") else "")


def wants_text(request: Request) -> bool:
    return request.headers.get("accept") == "text/plain"


def create_app(controller: Controller, token: str, on_shutdown: Callable[[], None] | None = None) -> Starlette:
    store = controller.d.store
    token_id = hashlib.sha256(token.encode()).hexdigest()[:8]
    throttle = RejectionThrottle()

    def reject(request: Request) -> None:
        address = request.client.host if request.client else "unknown"
        suppressed = throttle.admit(address, time.monotonic())
        if suppressed is None:
            return
        presented = "wrong" if request.headers.get("authorization") else "no"
        store.audit.record("token.rejected", actor=f"unauthenticated client at {address}",
                           why=f"{presented} API token on {request.method} {request.url.path}",
                           evidence={"address": address, "method": request.method, "path": request.url.path,
                                     "claimed_actor": claimed_actor(request),
                                     "rejected_since_last": suppressed})

    async def audited(request: Request, action: str, service: str | None, call: Callable[[], Awaitable[Any]],
                      why: str, rollout_id: str | None = None, **evidence: Any) -> Any:
        """Carry out a change with its audit entry (written before its first consequence)."""
        pending = store.audit.begin(action, actor=f"{claimed_actor(request)} via token {token_id}",
                                    service=service, why=why, rollout_id=rollout_id,
                                    evidence={k: v for k, v in evidence.items() if v not in (None, "", [])})
        try:
            result = await call()
        except BaseException as e:
            store.audit.finish(pending, failed=e.message if isinstance(e, ShipyardError) else repr(e))
            raise
        store.audit.finish(pending, result.id if isinstance(result, Rollout) else None)
        return result

    def active_id(service: str) -> str | None:
        rs = store.active_rollouts(service)
        return rs[-1].id if rs else None

    def route(path: str, methods: list[str] | None = None, public: bool = False):
        def wrap(fn: Handler) -> Route:
            async def endpoint(request: Request) -> Response:
                if not public and not _authorized(request, token):
                    reject(request)
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
        name = request.path_params["name"]
        await audited(request, "remove", name, lambda: controller.remove(name), f"remove service {name}",
                      active_id(name))
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
        plan = data.get("plan")      # sent by `shipyard apply`: the changes it saw, as evidence
        if plan is not None and not (isinstance(plan, list) and all(isinstance(x, str) for x in plan)):
            raise SpecError("plan must be a list of strings: the changes apply saw")
        image = data.get("image")
        summary = f"apply {path}: " + "; ".join(plan)[:500] if plan else f"deploy {path}"
        why = allow_unsafe.strip() or summary
        r = await audited(request, "apply" if plan is not None else "deploy", None,
                          lambda: controller.deploy(path, image_id=image, allow_unsafe=allow_unsafe.strip()),
                          why, spec_path=path, image=image, allow_unsafe=allow_unsafe.strip(),
                          changes=(plan or [])[:200])
        return JSONResponse({"rollout": r.to_dict()}, status_code=202)

    @route("/v1/plan", ["POST"])
    async def plan(request: Request) -> Any:
        path = (await body(request)).get("spec_path")
        if not isinstance(path, str) or not path:
            raise SpecError("plan needs spec_path: the absolute path of the spec file")
        return await controller.plan(path)

    @route("/metrics", public=True)
    async def metrics(_: Request) -> Any:
        return Response(await render_metrics(controller), media_type=METRICS_CONTENT_TYPE)

    @route("/v1/services/{name}/drift")
    async def drift_last(request: Request) -> Any:
        name = request.path_params["name"]
        controller.status(name)                      # 404 for an unknown service
        return {"report": controller.drift.reports.get(name), "enforcement": controller.enforcement()}

    @route("/v1/services/{name}/checklist")
    async def checklist_one(request: Request) -> Any:
        from shipyard.rollout.checklist_inputs import checklist, rate_param
        return await checklist(controller, request.path_params["name"], rate_param(request.query_params))

    @route("/v1/checklist")
    async def checklist_all(request: Request) -> Any:
        from shipyard.rollout.checklist_inputs import checklist, rate_param
        rate = rate_param(request.query_params)
        return {"services": [await checklist(controller, s.name, rate) for s in store.list_services()]}

    @route("/v1/services/{name}/drift", ["POST"])
    async def drift_scan(request: Request) -> Any:
        name = request.path_params["name"]
        data = await body(request)
        mode = data.get("mode", "metadata")
        if mode not in ("metadata", "full"):
            raise SpecError(f"drift mode must be metadata or full, not {mode!r}")
        if data.get("fix"):
            actor = f"{claimed_actor(request)} via token {token_id}"
            result = await audited(request, "drift.fix", name, lambda: controller.drift.fix(name, mode, actor),
                                   f"drift --fix ({mode} scan)")
            return result | {"enforcement": controller.enforcement()}
        report = await controller.drift.scan(name, mode)
        return {"report": report.to_dict(), "enforcement": controller.enforcement()}

    @route("/v1/audit")
    async def audit(request: Request) -> Any:
        q = request.query_params
        try:
            limit, since = int(q.get("limit", "100")), int(q.get("since", "0"))
        except ValueError:
            raise SpecError("limit and since must be whole numbers") from None
        entries = store.audit.entries(q.get("service") or None, min(max(limit, 0), MAX_AUDIT_LIMIT), since)
        return {"audit": [e.to_dict() for e in entries]}

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
        name = request.path_params["name"]
        return await audited(request, "db.contract", name,
                             lambda: controller.gate.contract(name, reason.strip()),
                             reason.strip() or "apply the held-back contract migrations",
                             allow_unsafe=reason.strip())

    @route("/v1/services/{name}/promote", ["POST"])
    async def promote(request: Request) -> Any:
        full = bool((await body(request)).get("full", False))
        name = request.path_params["name"]
        why = "promote to 100 %, skipping the remaining steps" if full else "promote"
        r = await audited(request, "promote", name, lambda: controller.promote(name, full=full), why,
                          active_id(name), full=full)
        return {"rollout": r.to_dict()}

    @route("/v1/services/{name}/pause", ["POST"])
    async def pause(request: Request) -> Any:
        name = request.path_params["name"]
        return {"rollout": (await audited(request, "pause", name, lambda: controller.pause(name),
                                          "hold the canary's weight", active_id(name))).to_dict()}

    @route("/v1/services/{name}/resume", ["POST"])
    async def resume(request: Request) -> Any:
        name = request.path_params["name"]
        return {"rollout": (await audited(request, "resume", name, lambda: controller.resume(name),
                                          "continue after pause", active_id(name))).to_dict()}

    @route("/v1/services/{name}/abort", ["POST"])
    async def abort(request: Request) -> Any:
        name = request.path_params["name"]
        return {"rollout": (await audited(request, "abort", name, lambda: controller.abort(name),
                                          "aborted by user", active_id(name))).to_dict()}

    @route("/v1/services/{name}/retry", ["POST"])
    async def retry(request: Request) -> Any:
        name = request.path_params["name"]
        r = await audited(request, "retry", name, lambda: controller.retry(name),
                          "retry the last failed deploy")
        return JSONResponse({"rollout": r.to_dict()}, status_code=202)

    @route("/v1/services/{name}/rollback", ["POST"])
    async def rollback(request: Request) -> Any:
        name = request.path_params["name"]
        r = (await audited(request, "rollback", name, lambda: controller.rollback(name),
                           "roll back to the previous release", active_id(name))).to_dict()
        if wants_text(request):
            done = r["phase"] in ("succeeded", "failed", "aborted")
            return PlainTextResponse(rollback_text(r) + "\n" if done else "", headers={
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

    return Starlette(routes=[ping, services, service, remove, history, deploy, db_check, db_contract, promote,
                             pause, resume, abort, retry, rollback, rollout, events, logs, images, shutdown,
                             plan, audit, drift_last, drift_scan, metrics, checklist_one, checklist_all,
                             *dashboard_routes(controller)])


def claimed_actor(request: Request) -> str:
    """The X-Shipyard-Actor header, cleaned for the log (it is what the client says, not proof)."""
    raw = request.headers.get(ACTOR_HEADER, "")
    return "".join(c for c in raw if c.isprintable())[:100].strip() or UNKNOWN_ACTOR


def _authorized(request: Request, token: str) -> bool:
    got = request.headers.get("authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())


def _image(i: Any) -> dict[str, Any]:
    return {"id": i.id, "service": i.service, "created_at": i.created_at, "files": i.files, "size": i.size,
            "command": i.command}
