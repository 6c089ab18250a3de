"""A closed-loop HTTP/1.1 load client for test_router_overload.py: N keep-alive connections,
each sending GET / and waiting for the whole response before the next, for a fixed time.

Run as its own process (`python overload_client.py 127.0.0.1:8080 --connections 1000
--seconds 8`) so its CPU does not slow the test's event loop; prints one JSON object:
requests, failed (no 2xx within --timeout, or a cut connection), the first few failures
and the latency quantiles in ms. asyncio Protocols on uvloop when present: one Python
process drives 1,000 connections at the router's speed, as wrk would."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n"


class Conn(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.t0 = 0.0
        self.want = -1
        self.status = 0
        self.done: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> asyncio.Future[bool]:
        self.done = asyncio.get_running_loop().create_future()
        self.buf, self.want = b"", -1
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(REQUEST)
        return self.done

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.want < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].split(b"\r\n")
            self.status = int(head[0].split(b" ")[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.want = end + 4 + length
        if len(self.buf) >= self.want and self.done is not None and not self.done.done():
            self.stats.latencies.append((time.perf_counter() - self.t0) * 1000)
            self.done.set_result(200 <= self.status < 300)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed by the router"))


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < 10:
            self.failures.append(what)


async def one_connection(host: str, port: int, stats: Stats, until: float, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    conn: Conn | None = None
    while time.monotonic() < until:
        try:
            if conn is None or conn.transport is None or conn.transport.is_closing():
                _, conn = await asyncio.wait_for(loop.create_connection(lambda: Conn(stats), host, port), timeout)
            stats.requests += 1
            ok = await asyncio.wait_for(conn.send(), timeout)
            if not ok:
                stats.fail(f"status {conn.status}: {conn.buf[-200:]!r}")
        except TimeoutError:
            stats.fail(f"no answer within {timeout:g}s")
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            conn = None
        except OSError as e:
            stats.fail(f"{type(e).__name__}: {e}")
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


def quantile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    host, _, port = args.address.rpartition(":")
    stats = Stats()
    until = time.monotonic() + args.seconds
    await asyncio.gather(*(one_connection(host, int(port), stats, until, args.timeout)
                           for _ in range(args.connections)))
    lat = sorted(stats.latencies)
    return {"requests": stats.requests, "failed": stats.failed, "failures": stats.failures,
            "p50_ms": quantile(lat, 0.5), "p99_ms": quantile(lat, 0.99), "max_ms": lat[-1] if lat else 0.0}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("address", help="HOST:PORT of the router")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=2.0, help="a request unanswered this long fails")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 256)), hard))
    try:
        import uvloop
        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
