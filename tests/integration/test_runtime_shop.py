"""The example shop, started by LocalRuntime exactly as its v1/v2/v3 specs describe, and its
HTTP/1.1 behaviour: keep-alive under concurrency, pipelining, error replies, draining."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.health import wait_healthy
from shipyard.runtime.local import LocalRuntime, read_proc_stat

pytestmark = pytest.mark.timeout(30)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop"


def parse_duration(text: str) -> float:
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    raise ValueError(text)


def build_tree(spec: dict[str, Any], dest: Path) -> Path:
    """What an image build does for the shop: copy the context, render build.files (no steps)."""
    build = spec["build"]
    assert "steps" not in build, "the shop must build offline, without steps"
    shutil.copytree(EXAMPLE / build["context"], dest, ignore=shutil.ignore_patterns(*build["ignore"]))
    for name, text in build["files"].items():
        (dest / name).write_text(text)
    return dest


class Shop:
    """One running shop instance and the pieces of its spec the tests need."""

    def __init__(self, runtime: LocalRuntime, inst: Instance, spec: dict[str, Any]) -> None:
        self.runtime, self.inst, self.spec = runtime, inst, spec

    @property
    def port(self) -> int:
        return self.inst.port


async def start_shop(runtime: LocalRuntime, tmp: Path, version: int, started: list[Instance]) -> Shop:
    spec = yaml.safe_load((EXAMPLE / f"v{version}.yaml").read_text())
    tree = build_tree(spec, tmp / f"tree-v{version}")
    launch = LaunchSpec(
        instance_id=f"shop-v{version}-a",
        service=spec["service"],
        slot="green",
        image_id=f"img-v{version}",
        tree=tree,
        command=spec["run"]["command"],
        env=spec["run"]["env"],
        instance_dir=tmp / f"inst-v{version}",
    )
    inst = await runtime.start(launch)
    started.append(inst)
    health = spec["health"]
    ok, why = await wait_healthy(
        # Probe faster than the spec's interval so the tests stay quick; the rest is the spec's.
        inst,
        path=health["path"],
        interval=min(parse_duration(health["interval"]), 0.05),
        timeout=parse_duration(health["timeout"]),
        healthy_threshold=health["healthy_threshold"],
        deadline_s=15,
        is_alive=runtime.is_alive,
        exit_code=runtime.exit_code,
    )
    assert ok, why
    return Shop(runtime, inst, spec)


@pytest.fixture
async def shop_factory(tmp: Path) -> AsyncIterator[Any]:
    runtime = LocalRuntime()
    started: list[Instance] = []

    async def factory(version: int = 1) -> Shop:
        return await start_shop(runtime, tmp, version, started)

    try:
        yield factory
    finally:
        for inst in started:
            stat = read_proc_stat(inst.pid)
            if stat is None or stat.start_time == inst.start_time:
                try:
                    os.killpg(inst.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5
        while any(runtime.is_alive(i) for i in started) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


# -- a tiny HTTP/1.1 client that keeps its connection ----------------------------------------------


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        extra = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        self.send(f"{method} {path} HTTP/1.1\r\nHost: shop\r\n{headers}{extra}\r\n".encode() + (body or b""))
        return await self.response(head=method == "HEAD")

    async def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = 0 if head else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return int(lines[0].split()[1]), headers, body

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""

    def close(self) -> None:
        self.writer.close()


# -- the three releases ---------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "greeting"), [(1, "hello"), (2, "hello from v2")])
async def test_good_releases_answer_with_their_version(
    shop_factory: Any, version: int, greeting: str
) -> None:
    shop = await shop_factory(version)
    conn = await Conn.open(shop.port)
    try:
        status, headers, body = await conn.request("GET", "/")
        assert status == 200 and headers["x-shop-version"] == str(version)
        assert headers["x-shop-instance"] == f"shop-v{version}-a"
        assert json.loads(body) == {
            "service": "shop",
            "version": str(version),
            "greeting": greeting,
            "instance": f"shop-v{version}-a",
        }
        for check in shop.spec["strategy"]["blue_green"]["preview_checks"]:
            assert (await conn.request("GET", check["path"]))[0] == check["expect_status"]
        status, _, body = await conn.request("GET", "/products")
        assert status == 200 and len(json.loads(body)) == 5
        status, _, body = await conn.request("GET", "/products/3")
        assert status == 200 and json.loads(body)["name"] == "Brass compass"
        assert (await conn.request("GET", "/products/99"))[0] == 404
        assert json.loads((await conn.request("GET", "/version"))[2]) == {"version": str(version)}
    finally:
        conn.close()


async def test_v3_is_broken_but_passes_its_health_check(shop_factory: Any) -> None:
    shop = await shop_factory(3)  # start_shop asserted wait_healthy succeeded
    conn = await Conn.open(shop.port)
    try:
        assert (await conn.request("GET", "/healthz"))[0] == 200
        for path in ("/", "/products", "/products/1"):
            status, headers, body = await conn.request("GET", path)
            assert status == 500 and headers["x-shop-version"] == "3"
            assert "catalog-v3.json" in json.loads(body)["error"]
        failing = [
            c
            for c in shop.spec["strategy"]["blue_green"]["preview_checks"]
            if (await conn.request("GET", c["path"]))[0] != c["expect_status"]
        ]
        assert len(failing) == 2  # both preview checks catch it
    finally:
        conn.close()


# -- HTTP behaviour ---------------------------------------------------------------------------------


async def test_many_concurrent_keepalive_clients(shop_factory: Any) -> None:
    shop = await shop_factory(1)
    clients, per_client = 100, 20

    async def client() -> int:
        conn = await Conn.open(shop.port)
        try:
            ok = 0
            for _ in range(per_client):
                status, headers, _ = await conn.request("GET", "/")
                ok += status == 200 and "connection" not in headers  # stays open
            return ok
        finally:
            conn.close()

    began = time.monotonic()
    results = await asyncio.gather(*(client() for _ in range(clients)))
    assert sum(results) == clients * per_client
    assert time.monotonic() - began < 10


async def test_pipelining_bodies_and_head(shop_factory: Any) -> None:
    shop = await shop_factory(1)
    conn = await Conn.open(shop.port)
    try:
        order = b'{"product": 2, "quantity": 3}'
        conn.send(
            b"GET /slow?ms=50 HTTP/1.1\r\nHost: s\r\n\r\n"
            + b"POST /orders HTTP/1.1\r\nHost: s\r\nContent-Length: "
            + str(len(order)).encode()
            + b"\r\n\r\n"
            + order
            + b"GET /version HTTP/1.1\r\nHost: s\r\n\r\n"
        )
        first, second, third = [await conn.response() for _ in range(3)]
        assert first[0] == 200 and json.loads(first[2])["slept_ms"] == 50  # order kept behind a slow reply
        assert second[0] == 201 and json.loads(second[2]) == {
            "order": 1,
            "product": 2,
            "quantity": 3,
            "total": 73.5,
        }
        assert third[0] == 200
        status, headers, body = await conn.request("HEAD", "/")
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        status, headers, _ = await conn.request("DELETE", "/products/1")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert (await conn.request("POST", "/orders", b"not json"))[0] == 400
        assert (await conn.request("GET", "/healthz"))[0] == 200  # still the same connection
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST /orders HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (b"POST /orders HTTP/1.1\r\nHost: s\r\n\r\n", 411),
        (b"POST /orders HTTP/1.1\r\nHost: s\r\nContent-Length: ten\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"this is not http\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_closes(
    shop_factory: Any, raw: bytes, status: int
) -> None:
    shop = await shop_factory(1)
    conn = await Conn.open(shop.port)
    try:
        conn.send(raw)
        got, headers, body = await conn.response()
        assert got == status and headers["connection"] == "close" and json.loads(body)["error"]
        assert await conn.at_eof()
    finally:
        conn.close()


async def test_sigterm_drains_in_flight_closes_idle_and_exits_fast(shop_factory: Any) -> None:
    shop = await shop_factory(2)
    idle = await Conn.open(shop.port)
    busy = await Conn.open(shop.port)
    try:
        assert (await idle.request("GET", "/"))[0] == 200
        busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: s\r\n\r\n")
        await asyncio.sleep(0.05)  # the slow request is in flight
        began = time.monotonic()
        stop = asyncio.create_task(shop.runtime.stop(shop.inst, 5))
        assert await idle.at_eof(), "idle keep-alive connections are closed at once"
        status, headers, body = await busy.response()
        assert status == 200 and headers["connection"] == "close" and json.loads(body)["slept_ms"] == 300
        await stop
        assert time.monotonic() - began < 1.0
        assert shop.runtime.exit_code(shop.inst) == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", shop.port)
        visits = json.loads((Path(shop.inst.data_dir) / "visits.json").read_text())
        assert visits == {"total": 2, "last_run": 2, "version": "2", "instance": "shop-v2-a"}
    finally:
        idle.close()
        busy.close()
