"""A real HAProxy (/usr/sbin/haproxy) logging LOG_FORMAT to TrafficLog's socket, in front
of real upstream servers (datagrams in two syslog formats, or a ring forwarded over a unix
stream): requests of known outcome come back as exact per-track series
and stats, HAProxy's own 503 (no server) and 502 (instance gone) counted as errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_router_support import free_port, short_tmpdir, upstreams

from shipyard.histogram import bucket_of, merge, upper_ms
from shipyard.router.haproxy.log_lines import LOG_FORMAT, START_RULE
from shipyard.router.haproxy.logs import TrafficLog

pytestmark = pytest.mark.timeout(60)
HAPROXY = "/usr/sbin/haproxy"


def config(port: int, sock: Path, fmt: str, blue: int, green: int) -> str:
    """`fmt` a syslog format sent as datagrams, or `ring`: a ring forwarded over a unix stream."""
    ring = f"""ring sylog
    format rfc5424
    maxlen 1200
    size 65536
    timeout connect 1s
    timeout server 10s
    server reader unix@{sock}
""" if fmt == "ring" else ""
    target = "ring@sylog" if fmt == "ring" else f"unix@{sock} format {fmt}"
    return ring + f"""global
    maxconn 200
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port}
    log {target} local0 info
    {START_RULE}
    log-format "{LOG_FORMAT}"
    use_backend svc__green if {{ req.hdr(x-track) -m str green }}
    use_backend svc__canary if {{ req.hdr(x-track) -m str canary }}
    default_backend svc__blue
backend svc__blue
    server b1 127.0.0.1:{blue}
backend svc__green
    server g1 127.0.0.1:{green}
backend svc__canary
    server c1 127.0.0.1:{green} disabled
"""


@contextlib.asynccontextmanager
async def running_haproxy(workdir: Path, cfg: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    (workdir / "haproxy.cfg").write_text(cfg)
    with open(workdir / "haproxy.out", "wb") as out:
        proc = await asyncio.create_subprocess_exec(HAPROXY, "-f", str(workdir / "haproxy.cfg"), "-db",
                                                    stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.returncode is None, (workdir / "haproxy.out").read_text()
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            assert time.monotonic() < deadline, "HAProxy does not listen"
            await asyncio.sleep(0.05)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


# (track header, path, status the client must see, slow): 19 requests of known outcome. The
# instance vanishing is first: on a later request of a keep-alive connection HAProxy closes the
# client connection without an answer (for the client to retry) and logs nothing.
PLAN = ([("blue", "/die?who=blue", 502, False)] + [("blue", "/", 200, False)] * 6
        + [("blue", "/status?code=500", 500, False)] * 3 + [("blue", "/sleep?s=0.3", 200, True)] * 2
        + [("green", "/", 200, False)] * 4 + [("green", "/status?code=503", 503, False)]
        + [("canary", "/", 503, False)] * 2)


@pytest.mark.parametrize("fmt", ["rfc5424", "rfc3164", "ring"])
async def test_haproxy_logs_become_the_judges_series(fmt: str) -> None:
    with short_tmpdir() as d:
        sock, port = d / "log.sock", free_port()
        log = TrafficLog("svc")
        await (log.start_stream(sock) if fmt == "ring" else log.start(sock))
        try:
            async with upstreams("blue", "green") as (blue, green), \
                    running_haproxy(d, config(port, sock, fmt, blue.port, green.port), port):
                started = time.time()
                slow_ms = []
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                    for track, path, status, slow in PLAN:
                        t0 = time.perf_counter()
                        r = await client.get(path, headers={"x-track": track})
                        if slow:
                            slow_ms.append((time.perf_counter() - t0) * 1000)
                        assert r.status_code == status, (track, path, r.text)
                # every response has ended; its second ends too before it may be reported
                await asyncio.sleep(int(time.time()) + 1.2 - time.time())
                out = log.series(started - 1)
                again = log.series(int(out["now"]) - 1)
                st = log.stats()
        finally:
            await log.close()
        assert not sock.exists()

    assert st["log"]["malformed"] == 0 and st["log"]["records"] == len(PLAN), st["log"]
    series = out["series"]
    assert set(series) == {"blue", "green", "canary"} and all(v == [] for v in again["series"].values())
    totals = {t: (sum(p["requests"] for p in pts), sum(p["errors"] for p in pts)) for t, pts in series.items()}
    assert totals == {"blue": (12, 4), "green": (5, 1), "canary": (2, 2)}  # every status >= 500
    for pts in series.values():
        assert all(started - 1 < p["t"] < out["now"] - 1 for p in pts)
        assert [p["t"] for p in pts] == sorted({p["t"] for p in pts})

    # latency: head received -> response sent, in the shared buckets; the two slow ones
    # at >= 300 ms and no later than the client saw them, every other one far below
    blue_lat = merge(p["latency"] for p in series["blue"])
    assert sum(blue_lat.values()) == 12
    slow = {b: c for b, c in blue_lat.items() if upper_ms(b) >= 300}
    assert sum(slow.values()) == 2
    assert all(bucket_of(300) <= b <= bucket_of(max(slow_ms)) for b in slow), (slow, slow_ms)
    assert all(upper_ms(b) < 250 for b in blue_lat if b not in slow)

    tracks = st["tracks"]
    assert tracks["blue"]["requests"] == 12 and tracks["blue"]["errors"] == 1  # the 502: instance gone
    assert tracks["blue"]["status"] == {"1xx": 0, "2xx": 8, "3xx": 0, "4xx": 0, "5xx": 4}
    assert tracks["green"]["status"]["5xx"] == 1 and tracks["green"]["errors"] == 0  # the instance's own 503
    assert tracks["canary"]["requests"] == 2 and tracks["canary"]["errors"] == 2  # HAProxy's 503, no server
    assert tracks["blue"]["latency"]["count"] == 12 and tracks["blue"]["latency"]["sum_ms"] >= 600
    assert st["upstreams"]["b1"]["requests"] == 12 and st["upstreams"]["g1"]["requests"] == 5
    assert "c1" not in st["upstreams"]
