"""The real router and two raw-logging backends, driven with blocking raw sockets.

Used by the hostile-input tests and the request-path fuzz: everything is a real
process on real sockets, and everything is cleaned up (process groups killed, temp
dir removed) even when a test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.router.table import RoutingTable, Upstream

HERE = Path(__file__).resolve().parent
PREVIEW = "hostile-preview-token-5b1f0c"
router_module = os.environ.get("SHIPYARD_TEST_ROUTER_MODULE", "shipyard.router.dataplane.proxy")
router_path = os.environ.get("SHIPYARD_TEST_ROUTER_PYTHONPATH")
"""The router process's module and import path: overridable only to show that these tests
fail on an older router (e.g. an exported old src/ and `shipyard.router.proxy`)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    @property
    def from_router(self) -> bool:
        return self.header(b"x-shipyard-error") is not None

    @property
    def nonce(self) -> str | None:
        if self.from_router:
            return None
        return str(json.loads(self.body)["nonce"])


@dataclass
class Backend:
    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    offset: int = 0

    def mark(self) -> None:
        self.offset = self.log.stat().st_size

    def seen(self) -> list[dict[str, Any]]:
        """What arrived since the last mark()."""
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        return [json.loads(line) for line in data.splitlines() if line.strip()]


@dataclass
class Plane:
    """A router serving `blue` (100 % of users) and `green` (preview only)."""

    port: int
    router: subprocess.Popen[bytes]
    control: Path
    router_log: Path
    backends: dict[str, Backend] = field(default_factory=dict)

    def mark(self) -> None:
        for b in self.backends.values():
            b.mark()

    def seen(self) -> list[dict[str, Any]]:
        return [e for b in self.backends.values() for e in b.seen()]

    def control_call(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.control))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return dict(json.loads(buf))

    def alive(self) -> bool:
        return self.router.poll() is None and bool(self.control_call({"op": "ping"}).get("ok"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.router.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.router.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _wait_for(check: Any, what: str, log: Path) -> None:
    for _ in range(400):
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.025)
    raise AssertionError(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def running_plane() -> Iterator[Plane]:
    tmp = Path(tempfile.mkdtemp(prefix="syh"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        backends = {}
        for name in ("blue", "green"):
            port, log = _free_port(), tmp / f"{name}.jsonl"
            log.touch()
            with open(tmp / f"{name}.out", "wb") as out:
                proc = subprocess.Popen([sys.executable, str(HERE / "rawlog_backend.py"), str(port), str(log)],
                                        stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
            procs.append(proc)
            backends[name] = Backend(name, port, log, proc)
        for b in backends.values():
            _wait_for(lambda b=b: socket.create_connection(("127.0.0.1", b.port), 0.2).close() is None,
                      f"backend {b.name}", tmp / f"{b.name}.out")
        port = _free_port()
        sock, log = tmp / "r.sock", tmp / "router.log"
        with open(log, "wb") as out:
            router = subprocess.Popen(
                [sys.executable, "-m", router_module, "--service", "shop", "--listen",
                 f"127.0.0.1:{port}", "--control", str(sock), "--table", str(tmp / "t.json"),
                 "--response-timeout", "10"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONPATH": router_path} if router_path else None)
        procs.append(router)
        plane = Plane(port, router, sock, log, backends)
        _wait_for(lambda: plane.control_call({"op": "ping"})["ok"], "router", log)
        table = RoutingTable("shop", 1, {n: (Upstream(f"{n}-0", "127.0.0.1", b.port),) for n, b in backends.items()},
                             {"blue": 100}, aliases={"stable": "blue", "preview": "green"}, preview_token=PREVIEW)
        assert plane.control_call({"op": "set_table", "table": table.to_dict()})["ok"], router_module
        yield plane
    finally:
        for p in procs:
            _kill(p)
        shutil.rmtree(tmp, ignore_errors=True)


def read_response(sock: socket.socket, buf: bytearray, deadline: float) -> Response | None:
    """One response from `sock` (bytes beyond it stay in `buf`); None on close or timeout."""
    def fill() -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return False
        buf.extend(chunk)
        return bool(chunk)

    while (end := buf.find(b"\r\n\r\n")) < 0:
        if not fill():
            return None
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[:end + 4]
    status = int(lines[0].split(b" ", 2)[1])
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])]
    resp = Response(status, headers, b"")
    length = resp.header(b"content-length")
    if length is not None:
        n = int(length)
        while len(buf) < n:
            if not fill():
                return None
        resp.body = bytes(buf[:n])
        del buf[:n]
    elif (resp.header(b"transfer-encoding") or b"").lower() == b"chunked":
        body = b""
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                if not fill():
                    return None
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            while len(buf) < eol + 2 + size + 2:
                if not fill():
                    return None
            body += bytes(buf[eol + 2:eol + 2 + size])
            del buf[:eol + 2 + size + 2]
            if size == 0:
                break
        resp.body = body
    return resp


def talk(port: int, pieces: list[bytes], expect: int, timeout: float) -> tuple[list[Response], str]:
    """Send `pieces`, read responses until `expect`, a router error, a close ("closed") or
    `timeout` ("timeout"); "done" when `expect` responses came."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        for p in pieces:
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
        buf = bytearray()
        deadline = time.monotonic() + timeout
        out: list[Response] = []
        while len(out) < expect:
            try:
                r = read_response(s, buf, deadline)
            except (ValueError, IndexError):
                return out, "garbled"
            if r is None:
                return out, "timeout" if time.monotonic() >= deadline else "closed"
            out.append(r)
            if r.from_router:
                return out, "closed"
        return out, "done"


def converse(port: int, pieces: list[bytes], expect: int, timeout: float = 3.0,
             pause: float = 0.0, check_close: bool = True) -> tuple[list[Response], bool]:
    """Send `pieces` on one connection, read up to `expect` responses; also whether the router
    closed the connection (checked briefly after the last response, unless check_close is off)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        for i, p in enumerate(pieces):
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause and i + 1 < len(pieces):
                time.sleep(pause)
        buf = bytearray()
        deadline = time.monotonic() + timeout
        out: list[Response] = []
        while len(out) < expect:
            r = read_response(s, buf, deadline)
            if r is None:
                return out, True
            out.append(r)
            if r.from_router or (r.header(b"connection") or b"").lower() == b"close":
                break
        if not check_close:
            return out, False
        closed = read_response(s, buf, time.monotonic() + 0.3) is None and _eof(s)
        return out, closed


def _eof(s: socket.socket) -> bool:
    s.settimeout(0.2)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True
