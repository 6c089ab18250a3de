"""What the shop answers: its release config, its catalog and its endpoints.

The release config (`release.toml`, baked into the image by the spec's build.files) is
the only thing that differs between v1, v2 and v3, which is what makes each version a
separate immutable image. v3 names a catalog file that does not exist: the shop still
starts and /healthz still says ok, but the pages that need the catalog fail - a broken
release that a health check alone would wave through."""

from __future__ import annotations

import asyncio
import json
import random
import tomllib
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PACKAGE_DIR = Path(__file__).resolve().parent
MAX_SLOW_MS = 10_000


@dataclass(frozen=True)
class Release:
    version: str = "dev"
    greeting: str = "hello"
    catalog: str = "catalog.json"
    error_rate: float = 0.0
    """Share of page requests (/ and /products...) answered 500: a release with a bug some users hit."""
    extra_latency_ms: float = 0.0
    """Added to every page request: a release that got slower."""


def load_release(path: Path) -> Release:
    """Read release.toml; a missing file means a development run with defaults."""
    if not path.exists():
        return Release()
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return Release(
        version=str(data.get("version", Release.version)),
        greeting=str(data.get("greeting", Release.greeting)),
        catalog=str(data.get("catalog", Release.catalog)),
        error_rate=float(data.get("error_rate", 0.0)),
        extra_latency_ms=float(data.get("extra_latency_ms", 0.0)),
    )


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode() + b"\n")


class Shop:
    """Routes a parsed request to a reply. Replies that do not depend on the request are
    built once at start, so the common paths cost a dict lookup."""

    def __init__(self, release: Release, instance: str) -> None:
        self.release = release
        self.instance = instance
        self.visits = 0  # requests other than health checks, since start
        self.orders = 0
        self.products: list[dict[str, Any]] = []
        self.catalog_error: str | None = None
        try:
            self.products = json.loads((PACKAGE_DIR / release.catalog).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.catalog_error = f"catalog {release.catalog!r} unavailable: {why}"
        self._by_id = {str(p["id"]): p for p in self.products}
        broken = json_reply(500, {"error": self.catalog_error})
        self._static: dict[str, Reply] = {
            "/healthz": Reply(200, b"ok\n", "text/plain; charset=utf-8"),
            "/version": json_reply(200, {"version": release.version}),
            "/": broken
            if self.catalog_error
            else json_reply(
                200,
                {
                    "service": "shop",
                    "version": release.version,
                    "greeting": release.greeting,
                    "instance": instance,
                },
            ),
            "/products": broken if self.catalog_error else json_reply(200, self.products),
        }
        self._broken = broken
        self._flaky = json_reply(500, {"error": "injected failure (release.toml error_rate)"})

    async def _later(self, req: Request) -> Reply:
        await asyncio.sleep(self.release.extra_latency_ms / 1000)
        reply = self._static.get(req.path)
        return reply if reply is not None else await _resolve(self._route(req))

    def handle(self, req: Request) -> Reply | Awaitable[Reply]:
        if req.path != "/healthz":
            self.visits += 1
            r = self.release
            if r.error_rate and (req.path == "/" or req.path.startswith("/products")) and \
                    random.random() < r.error_rate:
                return self._flaky
            if r.extra_latency_ms and req.path != "/slow":
                return self._later(req)
        return self._route(req)

    def _route(self, req: Request) -> Reply | Awaitable[Reply]:
        if req.path == "/orders":
            return self._order(req) if req.method == "POST" else _not_allowed("POST")
        if req.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        reply = self._static.get(req.path)
        if reply is not None:
            return reply
        if req.path.startswith("/products/"):
            if self.catalog_error:
                return self._broken
            product = self._by_id.get(req.path[len("/products/") :])
            return json_reply(200, product) if product else json_reply(404, {"error": "no such product"})
        if req.path == "/slow":
            return self._slow(req.query)
        return json_reply(404, {"error": f"no route for {req.path}"})

    def _order(self, req: Request) -> Reply:
        """POST /orders {"product": id, "quantity": n}: shows request bodies end to end."""
        if self.catalog_error:
            return self._broken
        try:
            order = json.loads(req.body or b"null")
            product = self._by_id[str(order["product"])]
            quantity = int(order.get("quantity", 1))
        except (ValueError, TypeError, AttributeError):
            return json_reply(400, {"error": 'body must be JSON like {"product": 1, "quantity": 2}'})
        except KeyError:
            return json_reply(404, {"error": "no such product"})
        if quantity < 1:
            return json_reply(400, {"error": "quantity must be at least 1"})
        self.orders += 1
        total = round(product["price"] * quantity, 2)
        return json_reply(
            201, {"order": self.orders, "product": product["id"], "quantity": quantity, "total": total}
        )

    async def _slow(self, query: str) -> Reply:
        """GET /slow?ms=N answers after N ms: an in-flight request to watch drain on shutdown."""
        try:
            ms = min(max(int(parse_qs(query).get("ms", ["100"])[0]), 0), MAX_SLOW_MS)
        except ValueError:
            return json_reply(400, {"error": "ms must be an integer"})
        await asyncio.sleep(ms / 1000)
        return json_reply(200, {"slept_ms": ms, "version": self.release.version})


async def _resolve(reply: Reply | Awaitable[Reply]) -> Reply:
    return reply if isinstance(reply, Reply) else await reply


def _not_allowed(allow: str) -> Reply:
    body = json.dumps({"error": f"method not allowed; use {allow}"}).encode() + b"\n"
    return Reply(405, body, headers=(("Allow", allow),))
