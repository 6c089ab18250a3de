"""Health probes and wait_healthy against real sockets served by small in-test servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from shipyard.rollout.records import Instance
from shipyard.runtime.health import probe, wait_healthy
from shipyard.runtime.ports import allocate_port

pytestmark = pytest.mark.timeout(20)

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeService:
    """An asyncio server whose answer the test chooses; records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.statuses: list[int] = [200]  # answers in turn; the last one repeats
        self.behaviour: Behaviour | None = None
        self.port = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if self.behaviour is not None:
                await self.behaviour(reader, writer)
            else:
                status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    svc = FakeService()
    svc.server = await asyncio.start_server(svc.handle, "127.0.0.1", 0)
    svc.port = svc.server.sockets[0].getsockname()[1]
    try:
        yield svc
    finally:
        svc.server.close()
        await svc.server.wait_closed()


def instance(port: int, log_path: Path) -> Instance:
    return Instance(
        id="i-1",
        service="svc",
        slot="blue",
        image_id="img",
        host="127.0.0.1",
        port=port,
        pid=1,
        start_time=0,
        log_path=str(log_path),
        data_dir="/nonexistent",
    )


# -- probe ---------------------------------------------------------------------------------------------


async def test_probe_ok_sends_a_well_formed_request(service: FakeService) -> None:
    result = await probe("127.0.0.1", service.port, "/healthz", 1)
    assert result.ok and result.status == 200 and result.error is None and 0 <= result.seconds < 1
    request = service.requests[0].decode()
    assert request.startswith("GET /healthz HTTP/1.1\r\n")
    assert "\r\nUser-Agent: shipyard-health\r\n" in request and "\r\nConnection: close\r\n" in request
    assert f"\r\nHost: 127.0.0.1:{service.port}\r\n" in request


@pytest.mark.parametrize(
    ("status", "ok"), [(204, True), (302, True), (404, False), (500, False), (503, False)]
)
async def test_probe_status_classes(service: FakeService, status: int, ok: bool) -> None:
    service.statuses = [status]
    result = await probe("127.0.0.1", service.port, "/", 1)
    assert result.ok is ok and result.status == status
    assert result.describe("/") == f"GET / -> {status}"


async def test_probe_connection_refused() -> None:
    result = await probe("127.0.0.1", allocate_port(), "/healthz", 1)
    assert not result.ok and result.status is None and result.error == "connection refused"
    assert result.describe("/healthz") == "GET /healthz -> connection refused"


async def test_probe_times_out_on_a_silent_server(service: FakeService) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    service.behaviour = silent
    began = time.monotonic()
    result = await probe("127.0.0.1", service.port, "/healthz", 0.2)
    assert time.monotonic() - began < 1
    assert not result.ok and result.error == "timed out after 0.2s"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", "connection closed without a response"),
        (b"SSH-2.0-OpenSSH\r\n", "bad response: 'SSH-2.0-OpenSSH'"),
        (b"HTTP/1.1 abc nope\r\n\r\n", "bad response"),
    ],
)
async def test_probe_bad_responses(service: FakeService, reply: bytes, error: str) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()

    service.behaviour = garbage
    result = await probe("127.0.0.1", service.port, "/", 1)
    assert (
        not result.ok
        and result.status is None
        and result.error is not None
        and result.error.startswith(error)
    )


# -- wait_healthy -----------------------------------------------------------------------------------------


async def test_wait_healthy_needs_consecutive_successes(service: FakeService, tmp: Path) -> None:
    service.statuses = [200, 500, 200, 500, 200, 200, 200]
    ok, why = await wait_healthy(
        instance(service.port, tmp / "log"),
        path="/healthz",
        interval=0.01,
        timeout=1,
        healthy_threshold=2,
        deadline_s=5,
        is_alive=lambda i: True,
    )
    assert ok and why == ""
    assert len(service.requests) == 6  # 200 500 200 500 200 200


async def test_wait_healthy_reports_the_last_probe_at_the_deadline(service: FakeService, tmp: Path) -> None:
    service.statuses = [500]
    began = time.monotonic()
    ok, why = await wait_healthy(
        instance(service.port, tmp / "log"),
        path="/healthz",
        interval=0.05,
        timeout=1,
        healthy_threshold=2,
        deadline_s=0.3,
        is_alive=lambda i: True,
    )
    assert not ok and why == "not healthy after 0.3s: last probe: GET /healthz -> 500"
    assert 0.3 <= time.monotonic() - began < 1
    assert 4 <= len(service.requests) <= 9  # about every 50 ms


async def test_wait_healthy_probes_at_the_interval(service: FakeService, tmp: Path) -> None:
    service.statuses = [503]
    ok, _ = await wait_healthy(
        instance(service.port, tmp / "log"),
        path="/",
        interval=0.1,
        timeout=1,
        healthy_threshold=1,
        deadline_s=0.45,
        is_alive=lambda i: True,
    )
    assert not ok and 4 <= len(service.requests) <= 6  # t = 0, .1, .2, .3, .4 (+ one at the deadline)


async def test_wait_healthy_stops_when_the_process_exits(tmp: Path) -> None:
    log = tmp / "log"
    log.write_text("".join(f"starting step {i}\n" for i in range(30)) + "Traceback: port already in use\n")
    checks = iter([True, True, False])
    began = time.monotonic()
    ok, why = await wait_healthy(
        instance(allocate_port(), log),
        path="/healthz",
        interval=0.02,
        timeout=1,
        healthy_threshold=2,
        deadline_s=10,
        is_alive=lambda i: next(checks, False),
        exit_code=lambda i: 1,
        log_lines=3,
    )
    assert not ok and time.monotonic() - began < 1
    assert why == (
        "process exited (code 1) before becoming healthy; last log lines:\n"
        "  starting step 28\n  starting step 29\n  Traceback: port already in use"
    )


async def test_wait_healthy_names_a_killing_signal(tmp: Path) -> None:
    ok, why = await wait_healthy(
        instance(allocate_port(), tmp / "log"),
        path="/",
        interval=0.02,
        timeout=1,
        healthy_threshold=1,
        deadline_s=5,
        is_alive=lambda i: False,
        exit_code=lambda i: -9,
    )
    assert not ok and why.startswith("process was killed by SIGKILL before becoming healthy")
    assert why.endswith("(log is empty)")
