"""The daemon's copy of the listening socket: it keeps the port open between routers, is
closed with the router on stop, and a re-adopted router hands a copy back to the daemon
(an old one that cannot is adopted as it is)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess

import pytest
from test_router_embedded import _get, _gone, paths, router  # noqa: F401 (fixtures)
from test_router_support import free_port, make_table, upstreams

from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.router.embedded import EmbeddedRouter

pytestmark = pytest.mark.timeout(40)


def _pid(er: EmbeddedRouter) -> int:
    return int(json.loads(er.pid_file("shop").read_text())["pid"])


async def _connects(port: int) -> bool:
    """True when the kernel completes a connect (queued in the backlog, accepted or not)."""
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except ConnectionRefusedError:
        return False
    w.close()
    return True


async def test_port_takes_connections_while_no_router_runs(router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    async with upstreams("blue") as (blue,):
        assert await router.ensure("shop", f"127.0.0.1:{port}") is None   # first start: nothing was lost
        await router.apply(make_table(3, {"blue": [blue]}, {"blue": 100}))
        pid = _pid(router)
        assert router.pids("shop") == {pid, os.getpid()}   # the daemon's copy is a listener of ours too
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if _gone(pid) or router._children[pid].poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert await _connects(port)               # queued in the backlog, not refused
        pending = asyncio.create_task(_get(port))  # waits for the next router instead of failing
        lost = await router.ensure("shop", f"127.0.0.1:{port}")
        assert lost == {"pid": pid, "exit_code": None, "signal": "SIGKILL", "reason": "it was killed by SIGKILL"}
        assert await asyncio.wait_for(pending, 10) == (200, "blue")
        assert await router.ensure("shop", f"127.0.0.1:{port}") is None   # alive: adopted, nothing lost
        await router.stop("shop")
        assert not await _connects(port)           # stopped: the daemon's copy is closed too


async def test_readopted_router_hands_its_socket_over(paths: StatePaths, router: EmbeddedRouter) -> None:  # noqa: F811
    """A daemon restarted under a running router gets a copy of its listening socket back
    (SCM_RIGHTS on the control socket), so that router's crash refuses no connection either."""
    port = free_port()
    async with upstreams("blue") as (blue,):
        await router.ensure("shop", f"127.0.0.1:{port}")
        await router.apply(make_table(5, {"blue": [blue]}, {"blue": 100}))
        pid = _pid(router)
        router._close_sockets("shop")              # as if the daemon that bound it had exited
        restarted = EmbeddedRouter(paths)          # the next daemon re-adopts: it must not bind
        assert await restarted.ensure("shop", f"127.0.0.1:{port}") is None
        assert _pid(restarted) == pid and restarted.pids("shop") == {pid, os.getpid()}   # it holds a copy now
        (_listen, socks), = restarted._sockets.values()
        assert [s.getsockname() for s in socks] == [("127.0.0.1", port)]
        assert await _get(port) == (200, "blue")
        os.kill(pid, signal.SIGKILL)
        router._children[pid].wait(5)
        assert await _connects(port)               # queued in the backlog by the daemon's copy, not refused
        pending = asyncio.create_task(_get(port))  # waits for the next router instead of failing
        lost = await restarted.ensure("shop", f"127.0.0.1:{port}")
        assert lost is not None and lost["pid"] == pid and "earlier daemon" in lost["reason"]
        assert await asyncio.wait_for(pending, 10) == (200, "blue")
        router._children.update(restarted._children)   # the fixture kills what either started
        await restarted.stop("shop")
        assert not await _connects(port)


async def test_an_old_router_that_cannot_hand_over_is_adopted_all_the_same(
        paths: StatePaths, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """A router from before `listen_fds` answers "unknown op": it is adopted as it is, the
    daemon says so once, holds no socket and binds nothing (the router has the port)."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    stand_in = subprocess.Popen(["sleep", "60"])       # the old router's pid: alive, never signalled
    asked: list[str] = []

    async def old_router(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            op = json.loads(line)["op"]
            asked.append(op)
            reply = ({"ok": True, "pid": stand_in.pid, "service": "shop", "listen": listen, "version": 1}
                     if op == "ping" else
                     {"ok": False, "error": f"unknown op {op!r} (expected ping, set_table, get_table, stats, "
                                            "series or shutdown)"})
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(old_router, str(paths.router_socket("shop")))
    try:
        daemon = EmbeddedRouter(paths)
        with caplog.at_level(logging.WARNING, logger="shipyard.router"):
            assert await daemon.ensure("shop", listen) is None
            assert await daemon.ensure("shop", listen) is None
        assert asked.count("listen_fds") == 1, asked       # asked once per router, not on every check
        warned = [r.getMessage() for r in caplog.records if "did not hand over" in r.getMessage()]
        assert len(warned) == 1 and "unknown op" in warned[0], warned
        assert daemon._sockets == {} and daemon.pids("shop") == set()   # no copy, nothing bound
        assert not await _connects(port)              # the stand-in listens nowhere: the daemon bound nothing
    finally:
        server.close()
        await server.wait_closed()
        stand_in.kill()
        stand_in.wait(5)


async def test_a_router_that_cannot_start_leaves_the_port_closed(paths: StatePaths) -> None:  # noqa: F811
    """Queueing connections only helps while a router is coming: if none can start, refuse them."""
    port = free_port()
    broken = EmbeddedRouter(paths, python="/bin/false")
    with pytest.raises(RouterError, match="exited at start"):
        await broken.ensure("shop", f"127.0.0.1:{port}")
    assert not await _connects(port) and broken.pids("shop") == set()
