"""The remote helper over real SSH on five namespace hosts: installed once (content-addressed),
an image shipped to all hosts at once with a bound on transfers and only missing objects
travelling, instances started from their trees that outlive a dropped connection and are
re-adopted by pid + start time through a new helper, stopped, their logs fetched."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ssh_support import options_for, targets

from shipyard.fleet.remote import bundle
from shipyard.fleet.shipping import ship_everywhere
from shipyard.images.build import BuildInput
from shipyard.images.store import ImageStore
from shipyard.runtime.ssh.connections import SshConnections
from shipyard.runtime.ssh.helper_session import HelperSession, HelperUnavailable
from support.netns_hosts import NetnsFleet

pytestmark = pytest.mark.timeout(120)

APP = """\
import http.server, sys
VERSION = open("version.txt").read().strip()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
print("serving", VERSION, flush=True)
http.server.HTTPServer((sys.argv[1], 8000), H).serve_forever()
"""


@pytest.fixture
def hosts(fleet5: NetnsFleet) -> Iterator[NetnsFleet]:
    yield fleet5
    for h in fleet5.hosts:   # image trees are read-only: let the fleet's clean-up remove them
        for d, _dirs, _files in os.walk(h.dir):
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)


@pytest.fixture
async def pool(hosts: NetnsFleet) -> AsyncIterator[SshConnections]:
    async with SshConnections(options_for(hosts)) as p:
        yield p


def sessions_for(pool: SshConnections, fleet: NetnsFleet, **kw: object) -> list[HelperSession]:
    return [HelperSession(pool.host(t), **kw) for t in targets(fleet)]   # type: ignore[arg-type]


async def close_all(sessions: list[HelperSession]) -> None:
    await asyncio.gather(*(s.close() for s in sessions))


async def test_the_helper_travels_once_and_a_new_controller_sends_nothing(hosts: NetnsFleet) -> None:
    sha, data = bundle.build()
    async with SshConnections(options_for(hosts)) as pool:
        first = sessions_for(pool, hosts)
        hellos = await asyncio.gather(*(s.client() for s in first))
        assert [s.bytes_sent for s in first] == [len(data)] * 5
        for h in hosts.hosts:
            installed = h.dir / "home" / bundle.remote_path(sha)
            assert installed.read_bytes() == data and installed.stat().st_mode & 0o777 == 0o444
            unpacked = h.dir / "home" / bundle.unpacked_path(sha)   # what runs: compiled once, on the host
            assert list((unpacked / "shipyard" / "fleet" / "remote" / "__pycache__").glob("helper.*.pyc"))
            assert unpacked.stat().st_mode & 0o777 == 0o555
        facts = await asyncio.gather(*(c.hello() for c in hellos))
        assert sorted(f["host"]["hostname"] for f in facts) == sorted(h.name for h in hosts.hosts)
        await close_all(first)
    async with SshConnections(options_for(hosts)) as pool:   # a controller restart: a new pool
        again = sessions_for(pool, hosts)
        await asyncio.gather(*(s.client() for s in again))
        assert [s.bytes_sent for s in again] == [0] * 5
        await close_all(again)


async def test_a_host_without_the_python_asked_for_is_refused_clearly(pool: SshConnections,
                                                                      hosts: NetnsFleet) -> None:
    session = HelperSession(pool.host(targets(hosts)[0]), python="/opt/none/python3")
    with pytest.raises(HelperUnavailable, match="h1 has no /opt/none/python3") as err:
        await session.client()
    assert err.value.hint is not None and "install python3 >= 3.11" in err.value.hint
    assert session.bytes_sent == 0


async def test_a_bundle_corrupted_on_the_way_is_refused_and_nothing_is_installed(pool: SshConnections,
                                                                                 hosts: NetnsFleet) -> None:
    sha, data = bundle.build()
    bad = data[:500] + bytes([data[500] ^ 1]) + data[501:]
    session = HelperSession(pool.host(targets(hosts)[0]), helper=(sha, bad))
    with pytest.raises(HelperUnavailable, match="installing the shipyard helper on h1 failed: .*corrupted"):
        await session.client()
    helper_dir = hosts.hosts[0].dir / "home" / bundle.HELPER_DIR
    assert not helper_dir.exists() or list(helper_dir.iterdir()) == []
    good = HelperSession(pool.host(targets(hosts)[0]))   # the real bundle then installs and runs
    assert (await (await good.client()).hello())["bundle_sha256"] == sha
    await good.close()


async def test_a_dead_host_fails_alone_while_the_others_get_the_image(hosts: NetnsFleet, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text(APP)
    (ctx / "version.txt").write_text("v1\n")
    image = await images.build(BuildInput("web", ctx, run_command=["python3", "app.py"]))
    hosts.kill_host(hosts.hosts[4])
    hosts.cut_network(hosts.hosts[4])
    async with SshConnections(options_for(hosts, reconnect_wait=1.5, connect_timeout=1)) as pool:
        sessions = sessions_for(pool, hosts)
        try:
            out = await ship_everywhere({s.name: s.client for s in sessions}, images, image.id, max_transfers=2)
        finally:
            await close_all(sessions)
    assert sorted(out.shipped) == ["h1", "h2", "h3", "h4"] and list(out.failed) == ["h5"]
    assert "h5" in str(out.failed["h5"]) and out.failed["h5"].hint


async def test_an_image_ships_to_all_hosts_bounded_and_only_missing_objects_travel(
        pool: SshConnections, hosts: NetnsFleet, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text(APP)
    (ctx / "big.bin").write_bytes(os.urandom(300_000))
    (ctx / "version.txt").write_text("v1\n")

    async def build() -> str:
        return (await images.build(BuildInput("web", ctx, run_command=["python3", "app.py"]))).id

    v1 = await build()
    (ctx / "version.txt").write_text("v2\n")
    v2 = await build()
    sessions = sessions_for(pool, hosts)
    try:
        by_host = {s.name: s.client for s in sessions}
        one = await ship_everywhere(by_host, images, v1, max_transfers=2)
        assert one.failed == {} and one.peak_transfers == 2
        assert {n: (s.objects_sent, s.bytes_sent) for n, s in one.shipped.items()} == {
            h.name: (3, 300_000 + len(APP) + 3) for h in hosts.hosts}
        two = await ship_everywhere(by_host, images, v2, max_transfers=2)
        assert {n: (s.objects_sent, s.bytes_sent, s.created) for n, s in two.shipped.items()} == {
            h.name: (1, 3, True) for h in hosts.hosts}
        clients = [await s.client() for s in sessions]
        for c in clients:
            assert (await c.verify(v2, "full")).clean
    finally:
        await close_all(sessions)


def get(address: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{address}:8000/", timeout=timeout) as r:   # noqa: S310 (test hosts)
        return r.read().decode()


async def serving(address: str, deadline: float = 10.0) -> str:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            return await asyncio.to_thread(get, address, 1.0)
        except OSError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.05)


async def test_instances_outlive_a_dropped_connection_and_are_readopted_stopped_and_logged(
        pool: SshConnections, hosts: NetnsFleet, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text(APP)
    (ctx / "version.txt").write_text("v7\n")
    image = await images.build(BuildInput("web", ctx, run_command=["python3", "app.py"]))
    sessions = sessions_for(pool, hosts)
    try:
        shipped = await ship_everywhere({s.name: s.client for s in sessions}, images, image.id, max_transfers=5)
        assert shipped.failed == {}
        started = {}
        for s, h in zip(sessions, hosts.hosts, strict=True):
            client = await s.client()
            started[h.name] = await client.start("web-1", ["python3", "app.py", h.address],
                                                 {"PATH": "/usr/bin:/bin"}, shipped.shipped[h.name].tree)
        assert [await serving(h.address) for h in hosts.hosts] == ["v7"] * 5
        helpers_before = [s.opens for s in sessions]

        for h in hosts.hosts:    # every host's SSH connection dies under the controller
            assert hosts.drop_connections(h)
        for h in hosts.hosts:
            assert await asyncio.to_thread(get, h.address) == "v7", "an instance died with its connection"

        for s, h in zip(sessions, hosts.hosts, strict=True):
            proc = started[h.name]
            client = await s.client()           # waits for the pool's reconnect, opens a new helper
            [state] = await client.status([(proc.pid, proc.start_time)])
            assert (state.pid, state.start_time, state.state) == (proc.pid, proc.start_time, "running")
            stopped = await client.stop(proc.pid, proc.start_time, timeout=5)
            assert stopped.how == "SIGTERM"
            [after] = await client.status([(proc.pid, proc.start_time)])
            assert after.state in ("exited", "gone")
            with pytest.raises(OSError):
                await asyncio.to_thread(get, h.address, 1.0)
            log = await client.logs("web-1", offset=0)
            assert b"serving v7" in log.data and b"GET / HTTP/1.1" in log.data
        assert [s.opens for s in sessions] == [n + 1 for n in helpers_before]
        assert all(s.bytes_sent == len(bundle.build()[1]) for s in sessions)   # not sent again
    finally:
        await close_all(sessions)
