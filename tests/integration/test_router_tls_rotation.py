"""A certificate rotated twice under load drops nothing, on both routers (HAProxy: `set ssl cert`
+ `commit ssl cert`, never a reload): wrk over https (64 keep-alive
connections, and a second wrk that opens a new TLS connection for every request, so
handshakes straddle each rotation) reports no socket error and no non-2xx answer, and a
Python client connecting after each rotation sees the new certificate."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import replace

import pytest
from test_router_support import make_table, upstreams
from test_router_tls import ca, client_context, installed, kind, make_router, paths, release, tls_get  # noqa: F401

from shipyard.paths import StatePaths
from support.certs import TestCA

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (tools/system-deps.sh)")]

DURATION = 10


def wrk_errors(out: str) -> dict[str, int]:
    """Requests, socket errors and non-2xx/3xx answers from wrk's report (absent lines are 0)."""
    m = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(m.group(1)) if m else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


async def wrk(url: str, connections: int, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t", "1", "-c", str(connections), "-d", f"{DURATION}s", "--timeout", "5s", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), DURATION + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


async def test_two_rotations_under_wrk_load_drop_nothing(paths: StatePaths, ca: TestCA,  # noqa: F811
                                                         kind: str) -> None:  # noqa: F811
    from test_router_support import free_port
    port = free_port()
    router = make_router(kind, paths)
    async with upstreams("blue", "blue2") as (blue, blue2):
        try:
            await router.ensure("shop", f"127.0.0.1:{port}")
            table = make_table(1, {"blue": [blue, blue2]}, {"blue": 100},
                               tls=installed(paths, ca.issue("one", ("localhost",))))
            await router.apply(table)
            url = f"https://localhost:{port}/"
            keepalive = asyncio.create_task(wrk(url, 64))
            churn = asyncio.create_task(wrk(url, 4, "-H", "Connection: close"))
            seen = [(await tls_get(port, client_context(ca)))[2]]
            pids = router.pids("shop")
            for n in (2, 3):
                await asyncio.sleep(DURATION / 3)
                table = replace(table, version=n, tls=installed(paths, ca.issue(f"cert{n}", ("localhost",))))
                await router.apply(table)
                seen.append((await tls_get(port, client_context(ca)))[2])
                assert seen[-1] == table.tls.fingerprint                 # type: ignore[union-attr]
            results = {"keep-alive": wrk_errors(await keepalive), "new connection per request": wrk_errors(await churn)}
            print(results)
            for what, r in results.items():
                assert r["requests"] > 100, (what, r)
                assert r["socket_errors"] == 0 and r["non_2xx"] == 0, (what, r)
            assert len(set(seen)) == 3
            assert (await router.stats("shop"))["tls"]["rotations"] == 2
            assert router.pids("shop") == pids                  # no restart, no reload
        finally:
            await release(router)
