"""The embedded router's writes per request, counted by the kernel (/proc/PID/io syscw): a
request whose head and body arrive together goes to its instance in one write, and answers
the router makes within one loop iteration leave in one write (dataplane/outbox.py). Every
write is a syscall and, on a busy machine, a wakeup of the peer: issue 14's CPU budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_router_support import RawClient, make_table, running_router, short_tmpdir, upstreams

pytestmark = pytest.mark.timeout(30)

N = 40


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


def writes(pid: int) -> int:
    """Write syscalls (write, writev) the process has made so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


async def test_a_post_costs_one_write_to_the_instance_and_one_to_the_client(workdir: Path) -> None:
    async with upstreams("blue") as (blue,), running_router(workdir) as router:
        await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
        assert router.proc is not None
        c = await RawClient.open(router.port)
        try:
            r = await c.request("POST", "/", body=b"warm")  # the pooled connection the others reuse
            assert r.status == 200
            before = writes(router.proc.pid)
            for i in range(N):
                body = b"order=%d&" % i + b"x" * 200
                r = await c.request("POST", f"/orders/{i}", body=body)
                assert r.status == 200 and r.json()["path"] == f"/orders/{i}"
            spent = writes(router.proc.pid) - before
        finally:
            c.close()
    # head + body to the instance in one writev, the response in one write: 2 per request
    # (3 when the body was written apart from the head). A little slack for a log line.
    assert spent <= 2 * N + 4, f"{spent} write syscalls for {N} POST requests"


async def test_answers_made_in_one_iteration_leave_in_one_write(workdir: Path) -> None:
    async with running_router(workdir) as router:
        await router.set(make_table(1, {}, {}))  # no live release: every request is answered 503 here
        assert router.proc is not None
        c = await RawClient.open(router.port)
        try:
            r = await c.request()
            assert r.status == 503
            before = writes(router.proc.pid)
            c.writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n" * N)  # pipelined, in one packet:
            for _ in range(N):  # all answered within one data_received
                r = await c.read_response()
                assert r.status == 503 and "no live release" in r.body.decode()
            spent = writes(router.proc.pid) - before
        finally:
            c.close()
    assert spent <= 4, f"{spent} write syscalls for {N} pipelined answers"
