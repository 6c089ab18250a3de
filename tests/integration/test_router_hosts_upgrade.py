"""A router of one service from before shared addresses (its own `<service>.sock`, a ping
without "services"): adopted as it is while its service names no domains; replaced by a
router of the address once it does, its listening socket taken over first (connections
queue instead of being refused) and its persisted table served by the new router."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess

import pytest
from test_router_embedded import _get, paths, router  # noqa: F401 (fixtures)
from test_router_support import RawClient, free_port, make_table, upstreams

from shipyard.paths import StatePaths
from shipyard.router.dataplane.control_server import save_table
from shipyard.router.embedded import EmbeddedRouter

pytestmark = pytest.mark.timeout(60)


async def test_an_old_router_is_adopted_then_replaced_when_its_service_names_domains(
        paths: StatePaths, router: EmbeddedRouter) -> None:  # noqa: F811
    port = free_port()
    listen = f"127.0.0.1:{port}"
    stand_in = subprocess.Popen(["sleep", "60"], start_new_session=True)   # the old router's pid
    held = socket.create_server(("127.0.0.1", port), backlog=128)        # the old router's socket
    asked: list[str] = []

    async def old_router(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            op = json.loads(line)["op"]
            asked.append(op)
            if op == "listen_fds":
                fd = writer.get_extra_info("socket").fileno()
                with socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM) as conn:   # a dup that can sendmsg
                    socket.send_fds(conn, [b'{"ok": true, "fds": 1}\n'], [held.fileno()])
                continue
            reply = {"ok": True, "pid": stand_in.pid, "service": "shop", "listen": listen, "version": 1}
            if op == "shutdown":
                reply = {"ok": True}
                stand_in.kill()
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        writer.close()

    paths.routers.mkdir(parents=True, exist_ok=True)
    server = await asyncio.start_unix_server(old_router, str(paths.router_socket("shop")))
    try:
        async with upstreams("blue") as (blue,):
            save_table(paths.router_table("shop"), make_table(7, {"blue": [blue]}, {"blue": 100}))
            assert await router.ensure("shop", listen) is None           # no domains: adopted as it is
            assert asked == ["ping", "listen_fds"] and stand_in.poll() is None
            assert router.pid_file("shop").exists()

            waiting = await RawClient.open(port)      # queued in the backlog of the socket taken over
            assert await router.ensure("shop", listen, domains=["shop.test"]) is None
            assert "shutdown" in asked and stand_in.wait(5) is not None
            r = await asyncio.wait_for(waiting.request("GET", "/", {"Host": "shop.test"}), 10)
            waiting.close()
            assert (r.status, r.headers.get("x-upstream")) == (200, "blue")
            assert (await router.current("shop")).version == 7             # its persisted table, served on
            assert os.path.islink(paths.router_socket("shop"))
            c = await RawClient.open(port)
            try:
                assert (await c.request("GET", "/", {"Host": "other.test"})).status == 404
            finally:
                c.close()
            await router.stop("shop")
    finally:
        server.close()
        held.close()
        stand_in.kill()
        stand_in.wait(5)
