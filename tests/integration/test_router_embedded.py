"""EmbeddedRouter: the daemon-side adapter that starts, adopts, restarts and stops routers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_router_support import RawClient, free_port, kill_group, make_table, short_tmpdir, upstreams

from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.router.embedded import EmbeddedRouter

pytestmark = pytest.mark.timeout(40)


def _router_pids(paths: StatePaths) -> set[int]:
    pids = set()
    for f in paths.routers.glob("*.pid"):
        try:
            pids.add(int(json.loads(f.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            pass
    return pids


@pytest.fixture
def paths():
    with short_tmpdir() as d:
        p = StatePaths(d).ensure()
        try:
            yield p
        finally:  # whoever started them, no router outlives its test
            for pid in _router_pids(p):
                kill_group(pid)


@pytest.fixture
def router(paths: StatePaths):
    er = EmbeddedRouter(paths)
    try:
        yield er
    finally:
        for pid, proc in list(er._children.items()):
            kill_group(pid)
            proc.wait(5)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def _get(port: int, headers: dict[str, str] | None = None) -> tuple[int, str]:
    c = await RawClient.open(port)
    try:
        r = await c.request(headers=headers)
        return r.status, (r.json()["name"] if r.status == 200 else r.body.decode())
    finally:
        c.close()


async def test_ensure_starts_applies_and_adopts(paths: StatePaths, router: EmbeddedRouter) -> None:
    port = free_port()
    async with upstreams("blue") as (blue,):
        await router.ensure("shop", f"127.0.0.1:{port}")
        assert await router.current("shop") is None
        await router.apply(make_table(4, {"blue": [blue]}, {"blue": 100}))
        assert (await router.current("shop")).version == 4  # type: ignore[union-attr]
        assert await _get(port) == (200, "blue")
        pid = json.loads(router.pid_file("shop").read_text())["pid"]
        assert paths.router_socket("shop").exists()
        assert oct(paths.router_socket("shop").stat().st_mode & 0o777) == "0o600"
        # called again (the daemon's periodic check), or by a restarted daemon: adopted, not restarted
        await router.ensure("shop", f"127.0.0.1:{port}")
        await EmbeddedRouter(paths).ensure("shop", f"127.0.0.1:{port}")
        assert json.loads(router.pid_file("shop").read_text())["pid"] == pid
        stats = await router.stats("shop")
        assert stats["tracks"]["blue"]["requests"] == 1
        await asyncio.sleep(int(time.time()) + 1.02 - time.time())  # that second is now complete
        series = await router.series("shop", 0)
        assert [(p["requests"], p["errors"]) for p in series["series"]["blue"]] == [(1, 0)]
        assert series["now"] > series["series"]["blue"][0]["t"] + 1
        await router.stop("shop")
        assert _gone(pid) and not paths.router_socket("shop").exists()
        with pytest.raises(RouterError, match="no router control socket"):
            await router.current("shop")


async def test_sigkilled_router_is_restarted_with_its_table(paths: StatePaths, router: EmbeddedRouter) -> None:
    port = free_port()
    async with upstreams("blue", "green") as (blue, green):
        await router.ensure("shop", f"127.0.0.1:{port}")
        await router.apply(make_table(9, {"blue": [blue], "green": [green]}, {"blue": 0, "green": 100}))
        pid = json.loads(router.pid_file("shop").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        await router.ensure("shop", f"127.0.0.1:{port}")
        new_pid = json.loads(router.pid_file("shop").read_text())["pid"]
        assert new_pid != pid
        assert _gone(pid)  # reaped: no zombie left behind
        assert (await router.current("shop")).version == 9  # type: ignore[union-attr]
        assert await _get(port) == (200, "green")


async def test_listen_change_replaces_the_router(paths: StatePaths, router: EmbeddedRouter) -> None:
    old, new = free_port(), free_port()
    async with upstreams("blue") as (blue,):
        await router.ensure("shop", f"127.0.0.1:{old}")
        await router.apply(make_table(2, {"blue": [blue]}, {"blue": 100}))
        pid = json.loads(router.pid_file("shop").read_text())["pid"]
        await router.ensure("shop", f"127.0.0.1:{new}")
        assert _gone(pid)
        assert await _get(new) == (200, "blue")
        with pytest.raises(OSError):
            await _get(old)


async def test_router_outlives_the_process_that_started_it(paths: StatePaths) -> None:
    port = free_port()
    async with upstreams("blue") as (blue,):
        table = make_table(3, {"blue": [blue]}, {"blue": 100}).to_dict()
        script = textwrap.dedent(f"""
            import asyncio
            from shipyard.paths import StatePaths
            from shipyard.router.embedded import EmbeddedRouter
            from shipyard.router.table import RoutingTable
            async def main():
                r = EmbeddedRouter(StatePaths.resolve({str(paths.root)!r}))
                await r.ensure("shop", "127.0.0.1:{port}")
                await r.apply(RoutingTable.from_dict({table!r}))
            asyncio.run(main())
        """)
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                      stderr=subprocess.PIPE, start_new_session=True)
        _, err = await asyncio.wait_for(daemon.communicate(), 20)
        assert daemon.returncode == 0, err.decode()
        pid = json.loads((paths.routers / "shop.pid").read_text())["pid"]
        assert not _gone(pid)
        assert await _get(port) == (200, "blue")


async def test_port_in_use_is_a_clear_error(paths: StatePaths, router: EmbeddedRouter) -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RouterError) as info:
            await router.ensure("shop", f"127.0.0.1:{port}")
        assert info.value.message == f"the router for shop cannot listen on 127.0.0.1:{port}: address already in use"
        assert "`listen`" in (info.value.hint or "")
        assert not router.pid_file("shop").exists() and router._children == {}
    finally:
        taken.close()


async def test_apply_without_router_says_so(router: EmbeddedRouter) -> None:
    async with upstreams("blue") as (blue,):
        with pytest.raises(RouterError, match="cannot apply table version 1 to the router for shop"):
            await router.apply(make_table(1, {"blue": [blue]}, {"blue": 100}))
