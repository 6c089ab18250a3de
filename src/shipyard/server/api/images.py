"""Images: the immutable builds the store holds."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shipyard.server.api.common import Api, route


@route("/v1/images")
async def images(api: Api, request: Request) -> Any:
    svc = request.query_params.get("service")
    return {"images": [_image(i) for i in api.controller.queries.images(svc)]}


def _image(i: Any) -> dict[str, Any]:
    return {"id": i.id, "service": i.service, "created_at": i.created_at, "files": i.files, "size": i.size,
            "command": i.command}
