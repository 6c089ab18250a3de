"""What the shop answers: its release config, its catalog and its endpoints.

The release config (`release.toml`, baked into the image by the spec's build.files) is
the only thing that differs between v1, v2 and v3, which is what makes each version a
separate immutable image. v3 names a catalog file that does not exist: the shop still
starts and /healthz still says ok, but the pages that need the catalog fail - a broken
release that a health check alone would wave through.

With DATABASE_URL set, products and orders live in PostgreSQL (tables made by
examples/shop/migrations) and release.toml says which columns this release reads and
writes: that is what lets a migration break an old release, and shipyard's gate catch it."""

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

from shop.pg import PgError, Pool, quote_ident, quote_literal

PACKAGE_DIR = Path(__file__).resolve().parent
MAX_SLOW_MS = 10_000
MAX_DB_QUANTITY = 1_000_000  # keeps total inside orders.total numeric(12,2)
DB_SETTINGS = {"application_name": "shop", "statement_timeout": "5s"}


@dataclass(frozen=True)
class Release:
    version: str = "dev"
    greeting: str = "hello"
    catalog: str = "catalog.json"
    error_rate: float = 0.0
    """Share of page requests (/ and /products...) answered 500: a release with a bug some users hit."""
    extra_latency_ms: float = 0.0
    """Added to every page request: a release that got slower."""
    product_name_column: str = "name"
    """Database mode: the products column this release reads as "name"."""
    product_legacy_column: str = ""
    """Database mode: a products column this release also reads, answered as "code" ("" = none)."""
    order_note_column: str = ""
    """Database mode: the orders column that POST /orders writes the request's "note" into ("" = none)."""


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
        product_name_column=str(data.get("product_name_column", Release.product_name_column)),
        product_legacy_column=str(data.get("product_legacy_column", "")),
        order_note_column=str(data.get("order_note_column", "")),
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
    built once at start, so the common paths cost a dict lookup. With a database URL the
    products and orders come from PostgreSQL; the pool connects on first use, so the shop
    starts (and /healthz answers) while the database is down."""

    def __init__(self, release: Release, instance: str, database_url: str | None = None) -> None:
        self.release = release
        self.instance = instance
        self.db = Pool(database_url, settings=DB_SETTINGS) if database_url else None
        columns = ["id", quote_ident(release.product_name_column), "price"]
        if release.product_legacy_column:
            columns.append(quote_ident(release.product_legacy_column))
        self._select_products = f"SELECT {', '.join(columns)} FROM products"
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
        home = {"service": "shop", "version": release.version, "greeting": release.greeting, "instance": instance}
        if self.db:
            home["database"] = "postgresql"
        self._static: dict[str, Reply] = {
            "/healthz": Reply(200, b"ok\n", "text/plain; charset=utf-8"),
            "/version": json_reply(200, {"version": release.version}),
            "/": broken if self.catalog_error else json_reply(200, home),
        }
        if self.catalog_error or not self.db:
            self._static["/products"] = broken if self.catalog_error else json_reply(200, self.products)
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
        if self.db and req.path == "/products":
            return self._db_products(self.db, None)
        if req.path.startswith("/products/"):
            if self.catalog_error:
                return self._broken
            if self.db:
                return self._db_products(self.db, req.path[len("/products/") :])
            product = self._by_id.get(req.path[len("/products/") :])
            return json_reply(200, product) if product else json_reply(404, {"error": "no such product"})
        if req.path == "/slow":
            return self._slow(req.query)
        return json_reply(404, {"error": f"no route for {req.path}"})

    def _order(self, req: Request) -> Reply:
        """POST /orders {"product": id, "quantity": n}: shows request bodies end to end."""
        if self.catalog_error:
            return self._broken
        if self.db:
            return self._db_order(self.db, req.body)
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

    async def _db_products(self, db: Pool, product_id: str | None) -> Reply:
        """GET /products (product_id None) or /products/<id> from the products table."""
        if product_id is None:
            sql = f"{self._select_products} ORDER BY id"
        elif _is_id(product_id):
            sql = f"{self._select_products} WHERE id = {quote_literal(int(product_id))}"
        else:
            return json_reply(404, {"error": "no such product"})
        try:
            rows = (await db.query(sql)).rows
        except PgError as exc:
            return _database_failed(exc)
        products = [self._product(row) for row in rows]
        if product_id is None:
            return json_reply(200, products)
        return json_reply(200, products[0]) if products else json_reply(404, {"error": "no such product"})

    def _product(self, row: list[str | None]) -> dict[str, Any]:
        product: dict[str, Any] = {"id": int(row[0] or 0), "name": row[1], "price": float(row[2] or 0)}
        if self.release.product_legacy_column:
            product["code"] = row[3]
        return product

    async def _db_order(self, db: Pool, body: bytes) -> Reply:
        """POST /orders in one statement: the price is read and the order written atomically."""
        note_column = self.release.order_note_column
        try:
            order = json.loads(body or b"null")
            product_id = str(order["product"])
            quantity = int(order.get("quantity", 1))
            note = order.get("note") if note_column else None
            if note is not None and not isinstance(note, str):
                raise TypeError("note must be a string")
            note_sql = quote_literal(note)
        except (ValueError, TypeError, AttributeError, KeyError):
            return json_reply(400, {"error": 'body must be JSON like {"product": 1, "quantity": 2}'})
        if not _is_id(product_id):
            return json_reply(404, {"error": "no such product"})
        if not 1 <= quantity <= MAX_DB_QUANTITY:
            return json_reply(400, {"error": f"quantity must be between 1 and {MAX_DB_QUANTITY}"})
        amount = quote_literal(quantity)
        columns, values = "product_id, quantity, total", f"id, {amount}, price * {amount}"
        if note_column:
            columns, values = f"{columns}, {quote_ident(note_column)}", f"{values}, {note_sql}"
        sql = (
            f"INSERT INTO orders ({columns}) SELECT {values} FROM products "
            f"WHERE id = {quote_literal(int(product_id))} RETURNING id, total"
        )
        try:
            rows = (await db.query(sql)).rows
        except PgError as exc:
            return _database_failed(exc)
        if not rows:
            return json_reply(404, {"error": "no such product"})
        self.orders += 1
        order_id, total = rows[0]
        return json_reply(
            201, {"order": int(order_id or 0), "product": int(product_id), "quantity": quantity,
                  "total": float(total or 0)}
        )

    def close(self) -> None:
        if self.db:
            self.db.close()

    async def _slow(self, query: str) -> Reply:
        """GET /slow?ms=N answers after N ms: an in-flight request to watch drain on shutdown."""
        try:
            ms = min(max(int(parse_qs(query).get("ms", ["100"])[0]), 0), MAX_SLOW_MS)
        except ValueError:
            return json_reply(400, {"error": "ms must be an integer"})
        await asyncio.sleep(ms / 1000)
        return json_reply(200, {"slept_ms": ms, "version": self.release.version})


def _is_id(text: str) -> bool:
    """A products.id (bigint) in decimal; anything else cannot name a product."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _database_failed(exc: PgError) -> Reply:
    return json_reply(500, {"error": f"database: {exc.message}"})


async def _resolve(reply: Reply | Awaitable[Reply]) -> Reply:
    return reply if isinstance(reply, Reply) else await reply


def _not_allowed(allow: str) -> Reply:
    body = json.dumps({"error": f"method not allowed; use {allow}"}).encode() + b"\n"
    return Reply(405, body, headers=(("Allow", allow),))
