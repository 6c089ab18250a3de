#!/usr/bin/env python3
"""The embedded router's Python cost per request, without sockets (issue 14: where do the
microseconds go?).

benchmarks/router.py measures the whole router process under wrk; on a shared machine its
figure moves by 10 % from run to run, more than most changes to the request path. This
drives the same code (a ClientConnection and pooled UpstreamConnections of a real
ProxyServer, with the benchmark's one-track table) on in-memory transports: one keep-alive
GET and its 200 per iteration, as wrk and the HAProxy backend send them. What it reports is
the interpreter + httptools part of a request only (no syscalls, no event loop), as CPU time
(process_time), the best and the median of the rounds.
Run: .venv/bin/python benchmarks/router_hotpath.py [--requests N] [--rounds R]"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from shipyard.router.dataplane.client import ClientConnection
from shipyard.router.dataplane.outbox import Outbox
from shipyard.router.dataplane.proxy_server import ProxyServer
from shipyard.router.dataplane.tries import TryWatch
from shipyard.router.dataplane.upstream import UpstreamConnection
from shipyard.router.table import RoutingTable, Upstream

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
"""What wrk sends."""
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
"""What the benchmark's HAProxy backends answer."""


class MemoryTransport:
    """The part of asyncio.Transport the data plane uses; what is written is kept, then dropped."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: Any) -> None:
        self.out.extend(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise RuntimeError("the router closed a keep-alive connection: the request path changed")

    abort = close


class NoLoop:
    """The outbox's loop: its flush is called by run() itself, at the points the event loop would
    run it (the one call_soon per loop iteration is not counted: under load it serves many requests)."""

    def call_soon(self, callback: Any) -> None:
        pass


def plane() -> tuple[ClientConnection, MemoryTransport, list[MemoryTransport]]:
    table = RoutingTable("bench", 1, {"blue": (Upstream("i0", "127.0.0.1", 9001), Upstream("i1", "127.0.0.1", 9002))},
                         {"blue": 100.0}, aliases={"stable": "blue"}, releases={"blue": "bench"},
                         preview_token="bench-preview-token")
    server = ProxyServer("bench", "127.0.0.1:8080", table)
    loop = asyncio.new_event_loop()
    server.loop, server.clock, server.tries = loop, loop.time(), TryWatch(loop)
    server.outbox = Outbox(NoLoop())  # type: ignore[arg-type]  # run() flushes it as the loop would
    bench = server.planes["bench"]
    bench.loop, bench.clock, bench.tries = server.loop, server.clock, server.tries
    upstream_transports = []
    for state in bench.upstreams.values():
        for _ in range(2):
            conn = UpstreamConnection(state, server.outbox)
            t = MemoryTransport()
            conn.connection_made(t)  # type: ignore[arg-type]
            state.release(conn, 0.0)
            upstream_transports.append(t)
    client = ClientConnection(server)
    ct = MemoryTransport()
    client.connection_made(ct)  # type: ignore[arg-type]
    return client, ct, upstream_transports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=50_000, help="requests per round")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    client, ct, uts = plane()
    outbox = client.outbox
    assert outbox is not None

    def run(n: int) -> None:
        for _ in range(n):
            client.data_received(REQUEST)
            outbox.flush()  # what the loop does at the end of the iteration: the request goes out
            client.active.conn.data_received(RESPONSE)  # type: ignore[union-attr]
            outbox.flush()  # and the response
        ct.out.clear()
        for t in uts:
            t.out.clear()

    run(1000)
    us = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        run(args.requests)
        us.append((time.process_time() - t0) / args.requests * 1e6)
    print(f"python CPU per request: best {min(us):.2f} µs, median {statistics.median(us):.2f} µs "
          f"({args.rounds} rounds of {args.requests:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
