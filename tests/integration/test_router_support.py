"""Shared harness of the router tests (no tests here): real upstream HTTP servers, a raw
keep-alive HTTP client that exposes its socket, and the router process itself.

Kept in a test_* module because the router owns only test_router_* files; the test
modules import it by name (pytest puts this directory on sys.path)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.control_client import RouterControlClient
from shipyard.router.haproxy.adapter import HAProxyRouter
from shipyard.router.table import RoutingTable, Upstream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pattern(n: int) -> bytes:
    """n deterministic bytes (so both ends can check a body without storing it twice)."""
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


# -- upstream HTTP server ----------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    conn: int


@dataclass
class TestUpstream:
    """A small real HTTP/1.1 server (asyncio streams) with routes the tests need."""

    __test__ = False
    name: str
    port: int = 0
    one_request_per_conn: bool = False
    """Close (without answering) any second request on a connection: the idle-close race."""
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> TestUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every connection: the instance is gone."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        for t in list(self._tasks):  # handlers asleep in /sleep or /stall
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0.05)

    @property
    def upstream(self) -> Upstream:
        return Upstream(f"{self.name}-{self.port}", "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if self.one_request_per_conn and served:
                    writer.transport.abort()
                    return
                served += 1
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        k = k.strip().lower()
                        headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
                self.seen.append(Seen(method, target, headers, conn_id))
                if not await self._respond(method, target, headers, reader, writer, conn_id):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, RuntimeError):
            return  # RuntimeError: uvloop refuses writes once the peer is gone
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _body(self, headers: dict[str, str], reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            left = int(headers.get("content-length", "0"))
            while left:
                chunk = await reader.read(min(left, 65536))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                yield chunk

    async def _respond(self, method: str, target: str, headers: dict[str, str],
                       reader: asyncio.StreamReader, w: asyncio.StreamWriter, conn_id: int) -> bool:
        path, _, query = target.partition("?")
        args = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/stream":  # echo each request chunk at once, as a chunked response
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            async for chunk in self._body(headers, reader):
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await w.drain()
            w.write(b"0\r\n\r\n")
            return True
        if path == "/stall":  # never reads the body nor answers: a hung instance
            await asyncio.sleep(30)
            return False
        h = hashlib.sha256()
        size = 0
        async for chunk in self._body(headers, reader):
            h.update(chunk)
            size += len(chunk)
        if path == "/sleep":
            await asyncio.sleep(float(args.get("s", "1")))
        if path == "/die" and args.get("who") == self.name:  # read the request, then vanish: a killed instance
            w.transport.abort()
            return False
        if path == "/status":  # an answer with the given status (e.g. an instance's 500)
            code = int(args.get("code", "200"))
            w.write(b"HTTP/1.1 %d Status\r\nContent-Length: %d\r\nX-Upstream: %s\r\n\r\n%s"
                    % (code, len(self.name), self.name.encode(), self.name.encode()))
            await w.drain()
            return True
        if path == "/bytes":
            n = int(args["n"])
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            data = memoryview(pattern(n))
            for i in range(0, n, 256 * 1024):
                w.write(data[i:i + 256 * 1024])
                await w.drain()
            return True
        if path == "/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(int(args.get("n", "3"))):
                part = f"{self.name}-part{i};".encode()
                w.write(b"%x\r\n%s\r\n" % (len(part), part))
                await w.drain()
            w.write(b"0\r\n\r\n")
            return True
        if path == "/close":  # no length: the body ends when the connection closes
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + f"{self.name} until close".encode())
            await w.drain()
            return False
        info = {"name": self.name, "method": method, "path": target, "headers": headers, "conn": conn_id,
                "body_len": size, "body_sha256": h.hexdigest()}
        body = b"" if method == "HEAD" else json.dumps(info).encode()
        length = len(json.dumps(info).encode())
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"X-Upstream: %s\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\r\n%s"
                % (length, self.name.encode(), body))
        await w.drain()
        return True


# -- raw client -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


class RawClient:
    """One HTTP/1.x connection, kept open across requests, socket visible to the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str | None = None) -> RawClient:
        """Connect to 127.0.0.1:port, from the loopback address `source` if given (127.x.y.z)."""
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20,
                                             local_addr=(source, 0) if source else None)
        return cls(r, w)

    @property
    def local_port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])

    def close(self) -> None:
        self.writer.close()

    async def request(self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                      body: bytes | None = None, version: str = "HTTP/1.1") -> Response:
        self.send(method, path, headers, body, version)
        return await self.read_response(head=method == "HEAD")

    def send(self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
             body: bytes | None = None, version: str = "HTTP/1.1") -> None:
        h = {"Host": "shop.test", **(headers or {})}
        if body is not None and "Transfer-Encoding" not in h:
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.writer.write(head.encode() + (body or b""))

    async def read_response(self, head: bool = False) -> Response:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if head or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", ""):
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = await self.reader.read()
        return Response(status, headers, body)

    async def closed_by_peer(self, timeout: float = 2.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except TimeoutError:
            return False


# -- the router process ----------------------------------------------------------------------


class RouterProcess:
    """`python -m shipyard.router.dataplane.proxy` in its own session, killed (group) by `kill()`."""

    def __init__(self, workdir: Path, service: str = "shop", port: int | None = None,
                 extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.service = service
        self.port = port or free_port()
        self.listen = f"127.0.0.1:{self.port}"
        self.sock = workdir / f"{service}.sock"
        self.table_path = workdir / f"{service}.table.json"
        self.log = workdir / f"{service}.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = RouterControlClient(self.sock)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "shipyard.router.dataplane.proxy", "--service", self.service, "--listen",
                self.listen, "--control", str(self.sock), "--table", str(self.table_path), *self.extra]

    async def start(self, wait: bool = True) -> RouterProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if wait:
            for _ in range(200):
                if self.proc.poll() is not None:
                    raise AssertionError(f"router exited: {self.log.read_text()}")
                with contextlib.suppress(RouterError):
                    await RouterControlClient(self.sock, 0.5).ping()
                    return self
                await asyncio.sleep(0.025)
            raise AssertionError(f"router did not answer: {self.log.read_text()}")
        return self

    async def set(self, table: RoutingTable) -> None:
        await self.client.set_table(table)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc.pid)
            self.proc.wait(5)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


PREVIEW_TOKEN = "test-preview-token-0123456789abcdef"
"""The preview token of every table make_table builds: forced-track requests carry it (see track)."""


def track(name: str) -> dict[str, str]:
    """The headers that force a request onto track (or alias) `name`, as a preview check sends them."""
    return {"X-Shipyard-Track": name, "X-Shipyard-Preview-Token": PREVIEW_TOKEN}


def make_table(version: int, tracks: dict[str, list[TestUpstream]], weights: dict[str, float],
               service: str = "shop", **kw: Any) -> RoutingTable:
    kw.setdefault("preview_token", PREVIEW_TOKEN)
    return RoutingTable(service, version, {t: tuple(u.upstream for u in ups) for t, ups in tracks.items()},
                        weights, **kw)


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sy"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def upstreams(*names: str) -> AsyncIterator[list[TestUpstream]]:
    servers = [TestUpstream(n) for n in names]
    try:
        for s in servers:
            await s.start()
        yield servers
    finally:
        for s in servers:
            await s.stop()


@contextlib.asynccontextmanager
async def running_router(workdir: Path, **kw: object) -> AsyncIterator[RouterProcess]:
    r = RouterProcess(workdir, **kw)  # type: ignore[arg-type]
    try:
        await r.start()
        yield r
    finally:
        r.kill()


# -- either router, behind one face ------------------------------------------------------------

ROUTER_KINDS = ("embedded", "haproxy")
"""The data planes a router-level suite runs against: `@pytest.fixture(params=ROUTER_KINDS)`."""


class HAProxyHandle:
    """A real HAProxy driven by HAProxyRouter, with RouterProcess's face (port, set, client,
    kill), so one suite runs against both routers. `client` is the handle itself."""

    def __init__(self, workdir: Path, service: str = "shop", port: int | None = None) -> None:
        self.router = HAProxyRouter(workdir / "haproxy")
        self.service = service
        self.port = port or free_port()
        self.listen = f"127.0.0.1:{self.port}"
        self.client = self

    async def start(self) -> HAProxyHandle:
        await self.router.ensure(self.service, self.listen)
        return self

    async def set(self, table: RoutingTable) -> None:
        await self.router.apply(table)

    async def get_table(self) -> RoutingTable | None:
        return await self.router.current(self.service)

    async def stats(self) -> dict[str, Any]:
        return await self.router.stats(self.service)

    async def series(self, since: float) -> dict[str, Any]:
        return await self.router.series(self.service, since)

    @property
    def worker_pid(self) -> int | None:
        return self.router.proc.worker_pid

    def kill(self) -> None:
        self.router.proc.kill()


@contextlib.asynccontextmanager
async def running_kind(kind: str, workdir: Path, **kw: Any) -> AsyncIterator[Any]:
    """The router of `kind` serving `shop` on a free port: a RouterProcess or a HAProxyHandle."""
    if kind == "embedded":
        async with running_router(workdir, **kw) as r:
            yield r
        return
    h = HAProxyHandle(workdir, **kw)
    try:
        await h.start()
        yield h
    finally:
        h.kill()
        await h.router.close()


@contextlib.asynccontextmanager
async def running_haproxy(workdir: Path | None = None) -> AsyncIterator[HAProxyHandle]:
    """A started HAProxyHandle in `workdir` (else a short temp dir: unix socket paths are
    short), killed with its adapter closed at the end, also on failure."""
    with contextlib.ExitStack() as stack:
        h = HAProxyHandle(workdir if workdir is not None else Path(stack.enter_context(short_tmpdir())))
        try:
            await h.start()
            yield h
        finally:
            h.kill()
            await h.router.close()
