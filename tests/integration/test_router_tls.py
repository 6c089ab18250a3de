"""TLS on both routers, end to end: the daemon-side adapter (EmbeddedRouter, or HAProxyRouter
driving a real HAProxy) serves it, real clients (curl --cacert, Python's ssl with SNI and
hostname check) talk to it, through the Router port. Rotation is a table swap: new connections
get the new certificate, open ones keep theirs, no process restarts (HAProxy: `set ssl cert`);
a table whose certificate cannot be loaded is refused and the old one serves. The embedded
router's redirect listener is the daemon's socket, so it outlives a router crash; HAProxy's
is its own, so it comes back with the restarted HAProxy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from test_router_support import (
    ROUTER_KINDS,
    TestUpstream,
    free_port,
    kill_group,
    make_table,
    short_tmpdir,
    upstreams,
)

from shipyard.certificates import install, read_pair
from shipyard.errors import RouterError
from shipyard.paths import StatePaths
from shipyard.router.embedded import EmbeddedRouter
from shipyard.router.haproxy.adapter import HAProxyRouter
from shipyard.router.table import RoutingTable, TableTls
from support.certs import Pair, TestCA

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def paths() -> Iterator[StatePaths]:
    with short_tmpdir() as d:
        p = StatePaths(d).ensure()
        try:
            yield p
        finally:
            for f in p.routers.glob("*.pid"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    kill_group(int(json.loads(f.read_text())["pid"]))
            with contextlib.suppress(OSError, ValueError, IndexError):   # HAProxy's master (its session)
                kill_group(int((p.routers / "haproxy" / "haproxy.pid").read_text().split()[0]))


@pytest.fixture(params=ROUTER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Router = EmbeddedRouter | HAProxyRouter


def make_router(kind: str, paths: StatePaths) -> Router:
    """The adapter the daemon would use for `kind`, on the daemon's paths."""
    return EmbeddedRouter(paths) if kind == "embedded" else HAProxyRouter(paths.routers / "haproxy")


async def release(router: Router) -> None:
    """What a test leaves behind is gone: the data plane's processes and the daemon's sockets."""
    if isinstance(router, EmbeddedRouter):
        for pid, proc in list(router._children.items()):
            kill_group(pid)
            proc.wait(5)
        for listen in list(router._sockets):
            router._close_listen(listen)
        for listen in list(router._redirect_sockets):
            router._close_listen(listen, redirect=True)
    else:
        router.proc.kill()
        await router.close()


async def crash(router: Router) -> None:
    """SIGKILL the data plane (the embedded router process; HAProxy's master and worker)."""
    if isinstance(router, EmbeddedRouter):
        os.kill((await router._client("shop").ping())["pid"], signal.SIGKILL)
    else:
        assert router.proc.master_pid is not None
        kill_group(router.proc.master_pid)


def saved_table(kind: str, paths: StatePaths) -> dict:  # type: ignore[type-arg]
    """The table the router keeps on disk for a restart."""
    path = paths.router_table("shop") if kind == "embedded" else paths.routers / "haproxy" / "shop.table.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def ca(paths: StatePaths) -> TestCA:
    return TestCA(paths.root / "ca")


def installed(paths: StatePaths, pair: Pair) -> TableTls:
    """What the engine puts in the table: the checked pair installed in the state dir."""
    cert, key = install(read_pair(pair.cert, pair.key), paths.tls)
    return TableTls(str(cert), str(key), pair.fingerprint)


def client_context(ca: TestCA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pem))     # verifies the chain and the host name
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


async def tls_get(port: int, ctx: ssl.SSLContext, name: str = "localhost",
                  writer_out: list[asyncio.StreamWriter] | None = None) -> tuple[int, str, str, str | None]:
    """(status, the answering track, the peer certificate's SHA-256, ALPN) of one GET over TLS."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name), 10)
    try:
        return await _exchange(reader, writer)
    finally:
        if writer_out is None:
            writer.close()
        else:
            writer_out.append(writer)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, str, str, str | None]:
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    body = await reader.readexactly(length)
    sslobj = writer.get_extra_info("ssl_object")
    fp = hashlib.sha256(sslobj.getpeercert(binary_form=True)).hexdigest()
    name = json.loads(body)["name"] if head.startswith(b"HTTP/1.1 200") else body.decode()
    return int(head.split()[1]), name, fp, sslobj.selected_alpn_protocol()


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "--max-time", "10", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def tls_router(paths: StatePaths, ca: TestCA, kind: str, redirect: bool = False
                     ) -> AsyncIterator[tuple[Router, int, int, TestUpstream, RoutingTable]]:
    port, rport = free_port(), free_port()
    router = make_router(kind, paths)
    async with upstreams("blue") as (blue,):
        try:
            await router.ensure("shop", f"127.0.0.1:{port}", redirect_http=f"127.0.0.1:{rport}" if redirect else None)
            table = make_table(1, {"blue": [blue]}, {"blue": 100},
                               tls=installed(paths, ca.issue("one", ("localhost", "127.0.0.1"))))
            await router.apply(table)
            yield router, port, rport, blue, table
        finally:
            await release(router)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_curl_and_python_clients_verify_the_certificate_by_name(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind) as (_router, port, _r, _blue, table):
        code, out, err = await curl("--cacert", str(ca.pem), "-w", " %{http_code} %{http_version}",
                                    f"https://localhost:{port}/")
        assert code == 0, err
        assert json.loads(out.rsplit(" ", 2)[0])["name"] == "blue" and out.endswith(" 200 1.1")
        status, track, fp, alpn = await tls_get(port, client_context(ca))
        assert (status, track, fp, alpn) == (200, "blue", table.tls.fingerprint, "http/1.1")  # type: ignore[union-attr]
        # a client that does not trust the CA, or asks for another name, is refused by its own check
        code, _, err = await curl(f"https://localhost:{port}/")
        assert code == 60, err
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_get(port, client_context(ca), name="other.example.test")
        old = client_context(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_get(port, old)


async def test_the_instance_is_told_the_request_came_over_https(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind) as (_router, port, _r, blue, _t):
        code, _, err = await curl("--cacert", str(ca.pem), f"https://localhost:{port}/")
        assert code == 0, err
        assert blue.seen[-1].headers.get("x-forwarded-proto") == "https"


async def test_plain_http_to_the_tls_port_fails_cleanly_and_tls_goes_on(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind) as (router, port, _r, _blue, _t):
        t0 = time.monotonic()
        code, out, err = await curl(f"http://127.0.0.1:{port}/")
        assert code in (52, 56) and out == "", (code, err)      # empty reply / connection reset, at once
        assert time.monotonic() - t0 < 5
        assert (await tls_get(port, client_context(ca)))[0] == 200
        assert (await router.stats("shop"))["tls"]["fingerprint"]


async def test_a_silent_client_does_not_hold_up_handshakes(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind) as (_router, port, _r, _blue, _t):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]   # never say hello
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(*(tls_get(port, client_context(ca)) for _ in range(10)))
            assert [r[0] for r in results] == [200] * 10 and time.monotonic() - t0 < 5
            if kind == "embedded":
                # and the silent ones are dropped once the handshake timeout (10 s) passes (HAProxy
                # 2.6 bounds a handshake by `timeout client` only, 300 s: see docs/spec.md)
                r, _w = idle[0]
                assert await asyncio.wait_for(r.read(), 15) == b""
        finally:
            for _r2, w in idle:
                w.close()


async def test_rotation_is_a_table_swap_new_connections_only(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind) as (router, port, _r, _blue, table):
        ctx = client_context(ca)
        kept: list[asyncio.StreamWriter] = []
        first = await tls_get(port, ctx, writer_out=kept)
        pids = router.pids("shop")
        new = installed(paths, ca.issue("two", ("localhost",)))
        await router.apply(replace(table, version=2, tls=new))
        after = await tls_get(port, ctx)
        assert first[2] == table.tls.fingerprint and after[2] == new.fingerprint     # type: ignore[union-attr]
        assert router.pids("shop") == pids                                          # no restart, no reload
        stats = await router.stats("shop")
        assert stats["tls"] == {"fingerprint": new.fingerprint, "rotations": 1, "redirect_http": None}
        kept[0].close()


async def test_an_open_connection_keeps_its_certificate_across_a_rotation(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind) as (router, port, _r, _blue, table):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca),
                                                       server_hostname="localhost")
        try:
            before = await _exchange(reader, writer)
            new = installed(paths, ca.issue("two", ("localhost",)))
            await router.apply(replace(table, version=2, tls=new))
            again = await _exchange(reader, writer)      # same keep-alive connection, after the swap
            assert before[:3] == again[:3] == (200, "blue", table.tls.fingerprint)   # type: ignore[union-attr]
            assert (await tls_get(port, client_context(ca)))[2] == new.fingerprint
        finally:
            writer.close()


@pytest.mark.parametrize("bad", ["mismatched key", "same certificate, another key", "file changed", "missing file"])
async def test_a_table_whose_certificate_cannot_be_served_is_refused(paths: StatePaths, ca: TestCA, kind: str,
                                                                     bad: str) -> None:
    async with tls_router(paths, ca, kind) as (router, port, _r, _blue, table):
        other = installed(paths, ca.issue("two", ("localhost",)))
        assert table.tls is not None
        tls = {"mismatched key": TableTls(other.cert, table.tls.key, other.fingerprint),
               "same certificate, another key": TableTls(table.tls.cert, other.key, table.tls.fingerprint),
               "file changed": TableTls(other.cert, other.key, table.tls.fingerprint),
               "missing file": TableTls(str(paths.tls / "gone.pem"), other.key, other.fingerprint)}[bad]
        with pytest.raises(RouterError, match="refused"):
            await router.apply(replace(table, version=2, tls=tls))
        assert (await router.current("shop")).version == 1        # type: ignore[union-attr]
        assert (await tls_get(port, client_context(ca)))[2] == table.tls.fingerprint
        on_disk = saved_table(kind, paths)
        assert on_disk["version"] == 1 and on_disk["tls"]["fingerprint"] == table.tls.fingerprint


async def test_tls_can_be_turned_off_and_on_by_a_table(paths: StatePaths, ca: TestCA, kind: str) -> None:
    """The reply to the swap waits for the listener: the very next connection speaks the new protocol."""
    async with tls_router(paths, ca, kind) as (router, port, _r, _blue, table):
        for version in range(2, 8, 2):
            await router.apply(replace(table, version=version, tls=None))
            code, out, err = await curl(f"http://127.0.0.1:{port}/")
            assert code == 0 and json.loads(out)["name"] == "blue", err
            await router.apply(replace(table, version=version + 1))
            assert (await tls_get(port, client_context(ca)))[0] == 200


async def test_redirect_answers_308_and_outlives_a_router_crash(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind, redirect=True) as (router, port, rport, _blue, _t):
        code, out, err = await curl("-i", "-H", f"Host: shop.example.test:{rport}",
                                    f"http://127.0.0.1:{rport}/cart?id=7")
        assert code == 0, err
        assert out.startswith("HTTP/1.1 308")
        assert f"location: https://shop.example.test:{port}/cart?id=7\r\n" in out.lower()   # names: any case
        # following it with the CA verifies the certificate and lands on the service
        code, out, err = await curl("-L", "--cacert", str(ca.pem), f"http://localhost:{rport}/")
        assert code == 0 and json.loads(out)["name"] == "blue", err
        code, out, _ = await curl("-i", "-H", "Host: evil.example/x", f"http://127.0.0.1:{rport}/")
        assert out.startswith("HTTP/1.1 400") and "location" not in out.lower()

        await crash(router)
        await asyncio.sleep(0.2)
        pending = asyncio.create_task(curl("-i", "-H", "Host: localhost", f"http://127.0.0.1:{rport}/x"))
        await asyncio.sleep(0.3)             # queued in the daemon's copy of the socket meanwhile
        lost = await router.ensure("shop", f"127.0.0.1:{port}", redirect_http=f"127.0.0.1:{rport}")
        assert lost is not None and lost["signal"] == "SIGKILL"
        code, out, err = await pending
        assert code == 0 and out.startswith("HTTP/1.1 308"), (code, err)
        assert f"location: https://localhost:{port}/x\r\n" in out.lower()


async def test_a_changed_redirect_address_replaces_the_router(paths: StatePaths, ca: TestCA, kind: str) -> None:
    async with tls_router(paths, ca, kind, redirect=True) as (router, port, rport, _blue, _t):
        pids = router.pids("shop")
        await router.ensure("shop", f"127.0.0.1:{port}", redirect_http=None)
        assert router.pids("shop") != pids                         # HAProxy: a new worker (a reload)
        code, _, _ = await curl(f"http://127.0.0.1:{rport}/")
        assert code == 7                                           # nothing listens there any more
        assert (await tls_get(port, client_context(ca)))[2]        # the table (and TLS) came back with it


async def test_a_restarted_daemon_takes_over_the_redirect_socket_too(paths: StatePaths, ca: TestCA, kind: str) -> None:
    """After the daemon's own restart it holds the redirect listener's socket again (handed over
    by the running router), so a later router crash still refuses no redirect connection."""
    async with tls_router(paths, ca, kind, redirect=True) as (router, port, rport, _blue, _t):
        if isinstance(router, EmbeddedRouter):
            router._close_sockets("shop")                 # the first daemon is gone: its copies with it
            router._close_sockets("shop", redirect=True)
        else:
            await router.close()
        pids = router.pids("shop")
        restarted = make_router(kind, paths)
        try:
            assert await restarted.ensure("shop", f"127.0.0.1:{port}", redirect_http=f"127.0.0.1:{rport}") is None
            assert restarted.pids("shop") - {os.getpid()} == pids - {os.getpid()}     # adopted, not restarted
            code, out, err = await curl("-i", "-H", "Host: localhost", f"http://127.0.0.1:{rport}/z")
            assert code == 0 and out.startswith("HTTP/1.1 308"), (code, err)
            assert (await tls_get(port, client_context(ca)))[0] == 200
            if kind == "embedded":
                assert restarted._redirect_sockets[f"127.0.0.1:{port}"][0] == f"127.0.0.1:{rport}"  # type: ignore[union-attr]
                await crash(restarted)
                await asyncio.sleep(0.2)
                pending = asyncio.create_task(curl("-i", "-H", "Host: localhost", f"http://127.0.0.1:{rport}/y"))
                await asyncio.sleep(0.3)
                await restarted.ensure("shop", f"127.0.0.1:{port}", redirect_http=f"127.0.0.1:{rport}")
                code, out, err = await pending
                assert code == 0 and out.startswith("HTTP/1.1 308"), (code, err)
        finally:
            await release(restarted)


async def test_a_certificate_for_another_host_is_checked_by_name(paths: StatePaths, ca: TestCA, kind: str) -> None:
    """The router serves what it was given; clients check the name they asked for (SNI)."""
    async with tls_router(paths, ca, kind) as (router, port, _r, _blue, table):
        wrong = installed(paths, ca.issue("shop", ("shop.example.test",)))
        await router.apply(replace(table, version=2, tls=wrong))
        code, _, err = await curl("--cacert", str(ca.pem), f"https://localhost:{port}/")
        assert code == 60 and "localhost" in err, err           # no alternative name matches
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_get(port, client_context(ca), name="localhost")
        code, out, err = await curl("--cacert", str(ca.pem), "--resolve", f"shop.example.test:{port}:127.0.0.1",
                                    f"https://shop.example.test:{port}/")
        assert code == 0 and json.loads(out)["name"] == "blue", err
        assert (await tls_get(port, client_context(ca), name="shop.example.test"))[2] == wrong.fingerprint


async def test_large_bodies_both_ways_over_tls(paths: StatePaths, ca: TestCA, kind: str) -> None:
    """Flow control through the SSL transport: a 20 MB download (read by a slow client) and a
    5 MB chunked upload arrive whole."""
    from test_router_support import pattern
    async with tls_router(paths, ca, kind) as (_router, port, _r, blue, _t):
        body = paths.root / "down.bin"
        code, _, err = await curl("--cacert", str(ca.pem), "--limit-rate", "20M", "-o", str(body),
                                  f"https://localhost:{port}/bytes?n={20 * 1024 * 1024}")
        assert code == 0, err
        assert body.read_bytes() == pattern(20 * 1024 * 1024)
        up = paths.root / "up.bin"
        up.write_bytes(pattern(5 * 1024 * 1024))
        echoed = paths.root / "echo.bin"
        code, _, err = await curl("--cacert", str(ca.pem), "-H", "Transfer-Encoding: chunked", "-o", str(echoed),
                                  "--data-binary", f"@{up}", f"https://localhost:{port}/stream")
        assert code == 0, err
        assert echoed.read_bytes() == up.read_bytes()
