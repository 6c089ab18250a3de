"""The data plane as a real process, between real sockets: routing and HTTP relaying (both
routers, except what only the embedded one has)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import pytest
from test_router_support import (
    ROUTER_KINDS,
    RawClient,
    RouterProcess,
    TestUpstream,
    make_table,
    pattern,
    running_kind,
    running_router,
    short_tmpdir,
    track,
    upstreams,
)

from shipyard.errors import RouterError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def workdir():
    with short_tmpdir() as d:
        yield d


@pytest.fixture
async def farm():
    async with upstreams("blue", "green") as servers:
        yield servers


@pytest.fixture(params=ROUTER_KINDS)
async def router(workdir: Path, request: pytest.FixtureRequest):
    """Routing and HTTP relaying that any data plane must do: both routers."""
    async with running_kind(request.param, workdir) as r:
        yield r


@pytest.fixture
async def embedded(workdir: Path):
    """For what only the embedded data plane has (its process, control socket, ejection rules)."""
    async with running_router(workdir) as r:
        yield r


async def names(port: int, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    c = await RawClient.open(port)
    try:
        got: Counter[str] = Counter()
        for _ in range(n):
            r = await c.request(headers=headers)
            assert r.status == 200, r
            got[r.json()["name"]] += 1
        return got
    finally:
        c.close()


async def test_weights_100_0_send_everything_to_blue(router: RouterProcess, farm: list[TestUpstream]) -> None:
    blue, green = farm
    await router.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0}))
    assert await names(router.port, 40) == {"blue": 40}
    stats = await router.client.stats()
    assert stats["tracks"]["blue"]["requests"] == 40
    assert stats["tracks"]["green"]["requests"] == 0


async def test_weights_50_50_split_and_sticky_users(router: RouterProcess, farm: list[TestUpstream]) -> None:
    blue, green = farm
    await router.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 50, "green": 50}))
    got = await names(router.port, 400)
    assert set(got) == {"blue", "green"}
    assert 140 <= got["blue"] <= 260, got  # binomial(400, .5): 6+ sigma margin
    await router.set(make_table(2, {"blue": [blue], "green": [green]}, {"blue": 50, "green": 50},
                                sticky_header="X-User-Id", sticky_cookie="uid"))
    for user in ("alice", "bob", "carol", "dave"):
        by_header = await names(router.port, 10, {"X-User-Id": user})
        by_cookie = await names(router.port, 5, {"Cookie": f"theme=dark; uid={user}"})
        assert len(by_header) == 1 and by_header.keys() == by_cookie.keys(), (user, by_header, by_cookie)
    users = Counter()
    for i in range(60):
        users.update(await names(router.port, 1, {"X-User-Id": f"user-{i}"}))
    assert set(users) == {"blue", "green"}


async def test_header_override_picks_the_track(router: RouterProcess, farm: list[TestUpstream]) -> None:
    blue, green = farm
    await router.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0}))
    assert await names(router.port, 5, track("green")) == {"green": 5}
    assert await names(router.port, 5, track("nope")) == {"blue": 5}


async def test_keepalive_connection_survives_a_swap(router: RouterProcess, farm: list[TestUpstream]) -> None:
    blue, green = farm
    await router.set(make_table(1, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0}))
    c = await RawClient.open(router.port)
    try:
        port = c.local_port
        assert (await c.request()).json()["name"] == "blue"
        await router.set(make_table(2, {"blue": [blue], "green": [green]}, {"blue": 0, "green": 100}))
        r = await c.request()
        assert r.json()["name"] == "green"
        assert c.local_port == port and not c.reader.at_eof()
        assert r.json()["headers"]["x-forwarded-for"] == "127.0.0.1"
        # the blue instance leaves the table entirely: still no effect on the client connection
        await router.set(make_table(3, {"green": [green]}, {"green": 100}))
        assert (await c.request()).json()["name"] == "green"
        assert c.local_port == port
    finally:
        c.close()


async def test_chunked_request_and_response_bodies(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: an instance's close-delimited answer is re-framed as chunked by the embedded router; HAProxy relays it as it came
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    c = await RawClient.open(router.port)
    try:
        body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        c.send("POST", "/", {"Transfer-Encoding": "chunked"}, body)
        r = await c.read_response()
        assert r.status == 200
        assert r.json()["body_len"] == 11
        assert r.json()["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
        r = await c.request("GET", "/chunked?n=4")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.body == b"blue-part0;blue-part1;blue-part2;blue-part3;"
        # an upstream body that ends with its connection becomes chunked for an HTTP/1.1 client,
        # so the client connection stays usable
        r = await c.request("GET", "/close")
        assert r.headers["transfer-encoding"] == "chunked" and r.body == b"blue until close"
        assert (await c.request()).status == 200
    finally:
        c.close()
    c10 = await RawClient.open(router.port)
    try:  # HTTP/1.0 cannot do chunked: raw body, then close
        r = await c10.request("GET", "/chunked?n=2", version="HTTP/1.0")
        assert r.body == b"blue-part0;blue-part1;" and "transfer-encoding" not in r.headers
        assert await c10.closed_by_peer()
    finally:
        c10.close()


async def test_bodies_stream_both_ways(router: RouterProcess, farm: list[TestUpstream]) -> None:
    """Each request chunk comes back before the next is sent: nothing waits for a whole body."""
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    c = await RawClient.open(router.port)
    try:
        c.writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
        assert b"200" in head.split(b"\r\n")[0]
        for i in range(5):
            piece = f"piece-{i}".encode()
            c.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            size = int(await asyncio.wait_for(c.reader.readuntil(b"\r\n"), 5), 16)
            assert await c.reader.readexactly(size + 2) == piece + b"\r\n"
        c.writer.write(b"0\r\n\r\n")
        assert await asyncio.wait_for(c.reader.readuntil(b"0\r\n\r\n"), 5) == b"0\r\n\r\n"
    finally:
        c.close()


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


async def test_ten_megabytes_stream_both_ways(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: the embedded router's own memory is measured
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    n = 10 * 1024 * 1024
    data = pattern(n)
    assert router.proc is not None
    before = rss_kb(router.proc.pid, "VmRSS")
    c = await RawClient.open(router.port)
    try:
        r = await c.request("POST", "/upload", body=data)
        assert r.json()["body_len"] == n
        assert r.json()["body_sha256"] == hashlib.sha256(data).hexdigest()
        r = await c.request("GET", f"/bytes?n={n}")
        assert len(r.body) == n and r.body == data
    finally:
        c.close()
    # flow control: the router never held a whole body (20 MB went through it)
    assert rss_kb(router.proc.pid, "VmHWM") - before < 8 * 1024


async def test_connect_failure_retries_ejects_and_readmits(embedded: RouterProcess) -> None:
    router = embedded  # embedded only: ejection and probing are the embedded router's (HAProxy retries the connect on another instance: test_router_haproxy.py)
    async with upstreams("a", "b") as (a, b):
        await router.set(make_table(1, {"blue": [a, b]}, {"blue": 100}))
        assert await names(router.port, 4) == {"a": 2, "b": 2}
        port = a.port
        await a.stop()
        assert await names(router.port, 10) == {"b": 10}  # no request fails
        ups = (await router.client.stats())["upstreams"]
        assert ups[a.upstream.id]["ejected"] is True
        assert ups[a.upstream.id]["connect_failures"] >= 1
        assert ups[b.upstream.id]["ejected"] is False
        a.port = port
        await a.start()
        for _ in range(40):  # probed every second
            if not (await router.client.stats())["upstreams"][a.upstream.id]["ejected"]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a was not re-admitted")
        assert await names(router.port, 4) == {"a": 2, "b": 2}


async def test_router_errors_502_and_503(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: the embedded router's own error answers and its (none) track
    c = await RawClient.open(router.port)
    try:
        r = await c.request()
        assert (r.status, r.body) == (503, b"shipyard: service shop has no live release\n")
        assert r.headers["x-shipyard-error"] == "1" and r.headers["content-type"].startswith("text/plain")
        dead = TestUpstream("dead")
        await dead.start()
        await dead.stop()
        await router.set(make_table(1, {"blue": [dead]}, {"blue": 100}))
        r = await c.request()  # the same keep-alive connection survives router errors
        assert r.status == 502
        assert r.body == b"shipyard: no reachable instance of track blue for service shop (connection refused)\n"
        assert r.headers["x-shipyard-error"] == "1"
        stats = (await router.client.stats())["tracks"]
        assert stats["blue"]["errors"] == 1 and stats["blue"]["status"]["5xx"] == 1
        assert stats["(none)"]["errors"] == 1
    finally:
        c.close()


async def test_slow_instance_gets_504(workdir: Path, farm: list[TestUpstream]) -> None:
    blue, _ = farm
    async with running_router(workdir, extra=["--response-timeout", "1"]) as router:
        await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
        c = await RawClient.open(router.port)
        try:
            r = await asyncio.wait_for(c.request("GET", "/sleep?s=6"), 5)
            assert r.status == 504
            assert r.body == (f"shipyard: instance {blue.upstream.id} of service shop did not answer "
                              "within 1s\n").encode()
            # an instance that stops reading a large body is timed out too (the client is paused)
            r = await asyncio.wait_for(c.request("POST", "/stall", body=pattern(8 * 1024 * 1024)), 6)
            assert r.status == 504
            assert (await router.client.stats())["tracks"]["blue"]["inflight"] == 0
        finally:
            c.close()


async def test_forwarded_headers_added_and_hop_by_hop_stripped(embedded: RouterProcess,
                                                               farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: HAProxy 2.6 forwards a header the client's Connection names (X-Secret here)
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    c = await RawClient.open(router.port)
    try:
        r = await c.request(headers={"X-Forwarded-For": "10.1.2.3", "Connection": "keep-alive, X-Secret",
                                     "X-Secret": "s", "Keep-Alive": "timeout=5", "Proxy-Authorization": "p",
                                     "TE": "trailers", "X-Kept": "yes"})
        seen = r.json()["headers"]
        assert seen["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "shop.test"
        assert seen["host"] == "shop.test" and seen["x-kept"] == "yes"
        for hop in ("x-secret", "keep-alive", "proxy-authorization", "te", "connection"):
            assert hop not in seen, hop
        # response side: the upstream's Connection and the header it names are not relayed
        assert "x-private" not in r.headers and r.headers.get("connection") is None
        assert r.headers["x-upstream"] == "blue"
    finally:
        c.close()


async def test_stats_count_per_track(router: RouterProcess, farm: list[TestUpstream]) -> None:
    blue, green = farm
    await router.set(make_table(7, {"blue": [blue], "green": [green]}, {"blue": 100, "green": 0}))
    await names(router.port, 6)
    await names(router.port, 3, track("green"))
    stats = await router.client.stats()
    assert stats["version"] == 7 and stats["uptime"] > 0
    b, g = stats["tracks"]["blue"], stats["tracks"]["green"]
    assert (b["requests"], b["status"]["2xx"], b["latency"]["count"], b["inflight"]) == (6, 6, 6, 0)
    assert (g["requests"], g["status"]["2xx"], g["latency"]["count"]) == (3, 3, 3)
    assert sum(b["latency"]["counts"]) == 6 and b["latency"]["sum_ms"] > 0
    assert len(b["latency"]["counts"]) == len(b["latency"]["buckets"]) == 14
    assert stats["upstreams"][blue.upstream.id]["requests"] == 6


async def test_a_track_counts_from_zero_when_its_release_changes(embedded: RouterProcess,
                                                                 farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: the embedded router restarts a track's counters with its release
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}, releases={"blue": "release-a"}))
    await names(router.port, 4)
    await router.set(make_table(2, {"blue": [blue]}, {"blue": 100}, releases={"blue": "release-a"}))
    await names(router.port, 2)
    track = (await router.client.stats())["tracks"]["blue"]
    assert (track["release"], track["requests"], track["status"]["2xx"]) == ("release-a", 6, 6)   # same release
    await router.set(make_table(3, {"blue": [blue]}, {"blue": 100}, releases={"blue": "release-b"}))
    await names(router.port, 3)
    track = (await router.client.stats())["tracks"]["blue"]
    assert (track["release"], track["requests"], track["latency"]["count"]) == ("release-b", 3, 3)
    await asyncio.sleep(1.1)                                 # let the last second complete
    series = (await router.client.series(0))["series"]["blue"]
    assert sum(p["requests"] for p in series) == 3           # release-a's seconds went with its counters


async def test_reused_connection_closed_by_instance_is_retried(router: RouterProcess) -> None:
    """The instance drops a pooled connection as the next request arrives on it: the
    router replays the request on a fresh connection and the client never notices."""
    flaky = TestUpstream("flaky", one_request_per_conn=True)
    await flaky.start()
    try:
        await router.set(make_table(1, {"blue": [flaky]}, {"blue": 100}))
        c = await RawClient.open(router.port)
        try:
            for i in range(5):
                r = await c.request("POST", "/", body=b"payload-%d" % i)
                assert r.status == 200
                assert r.json()["body_sha256"] == hashlib.sha256(b"payload-%d" % i).hexdigest()
        finally:
            c.close()
        assert flaky.connections >= 5
        assert [s.path for s in flaky.seen].count("/") >= 5
    finally:
        await flaky.stop()


async def test_idempotent_request_in_flight_on_a_dying_instance_goes_to_another(
        router: RouterProcess, farm: list[TestUpstream]) -> None:
    """An instance killed with a request in flight answers nothing: a GET is sent again to
    another instance of the track (the user sees a 200); a POST is not (it may have run)."""
    a, b = farm[0], farm[1]
    await router.set(make_table(1, {"blue": [a, b]}, {"blue": 100}))
    c = await RawClient.open(router.port)
    try:
        for _ in range(6):
            r = await c.request("GET", f"/die?who={a.name}")
            assert r.status == 200 and r.json()["name"] == b.name
        statuses = []
        for _ in range(6):
            c.close()
            c = await RawClient.open(router.port)
            statuses.append((await c.request("POST", f"/die?who={a.name}", body=b"x")).status)
        assert 502 in statuses and 200 in statuses      # round robin: a's share fails, b's succeeds
    finally:
        c.close()


async def test_head_and_pipelined_requests(router: RouterProcess, farm: list[TestUpstream]) -> None:
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    c = await RawClient.open(router.port)
    try:
        r = await c.request("HEAD", "/")
        assert r.status == 200 and int(r.headers["content-length"]) > 0
        c.writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = await c.read_response(), await c.read_response()
        assert (first.json()["path"], second.json()["path"]) == ("/one", "/two")
    finally:
        c.close()


async def test_sigterm_finishes_inflight_then_exits(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: the embedded router's process and control socket
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    idle = await RawClient.open(router.port)
    busy = await RawClient.open(router.port)
    try:
        assert (await idle.request()).status == 200
        busy.send("GET", "/sleep?s=0.5")
        await asyncio.sleep(0.2)
        assert router.proc is not None
        router.proc.terminate()
        r = await busy.read_response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert await idle.closed_by_peer()
        assert await asyncio.to_thread(router.proc.wait, 5) == 0
        assert not router.sock.exists()
    finally:
        idle.close()
        busy.close()


async def test_bind_failure_exits_with_one_line(workdir: Path) -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        r = RouterProcess(workdir, port=port)
        await r.start(wait=False)
        assert r.proc is not None
        assert await asyncio.to_thread(r.proc.wait, 10) != 0
        assert r.log.read_text().strip().splitlines()[-1] == f"listen 127.0.0.1:{port}: address already in use"
    finally:
        taken.close()


async def test_malformed_and_oversized_requests_are_refused(embedded: RouterProcess,
                                                            farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: the embedded router's own refusals and their wording
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    for raw, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400),
                        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
                        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400)):
        c = await RawClient.open(router.port)
        try:
            c.writer.write(raw)
            r = await c.read_response()
            assert r.status == status and r.headers["x-shipyard-error"] == "1", r
            assert r.body.startswith(b"shipyard: ") and await c.closed_by_peer()
        finally:
            c.close()
    assert blue.seen == []  # nothing malformed reached the instance


async def test_stale_or_foreign_tables_are_refused(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    router = embedded  # embedded only: the embedded router's control protocol
    blue, green = farm
    await router.set(make_table(5, {"blue": [blue]}, {"blue": 100}))
    with pytest.raises(RouterError, match="stale table: version 4 is older than the served version 5"):
        await router.set(make_table(4, {"green": [green]}, {"green": 100}))
    with pytest.raises(RouterError, match="this router serves 'shop'"):
        await router.set(make_table(6, {"green": [green]}, {"green": 100}, service="cart"))
    assert (await router.client.get_table()).version == 5  # type: ignore[union-attr]
    assert await names(router.port, 3) == {"blue": 3}
    # what is persisted is what is served: a restart comes back with version 5
    router.kill()
    await router.start()
    assert (await router.client.get_table()).version == 5  # type: ignore[union-attr]
    assert await names(router.port, 2) == {"blue": 2}


async def test_client_gone_mid_request_frees_everything(embedded: RouterProcess, farm: list[TestUpstream]) -> None:
    """A client that leaves (FIN or reset) mid-body or mid-wait must not leave the exchange,
    the in-flight count or the instance connection behind."""
    router = embedded  # embedded only: the embedded router's in-flight and abort counters
    blue, _ = farm
    await router.set(make_table(1, {"blue": [blue]}, {"blue": 100}))
    half = await RawClient.open(router.port)
    half.writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
    waiting = await RawClient.open(router.port)
    waiting.send("GET", "/sleep?s=3")
    await asyncio.sleep(0.3)
    assert (await router.client.stats())["tracks"]["blue"]["inflight"] == 2
    half.writer.write_eof()  # FIN with the body incomplete: the request can never finish
    waiting.writer.transport.abort()
    for _ in range(40):
        # (the sleeping handler only notices its closed connection when it wakes up)
        if (await router.client.stats())["tracks"]["blue"]["inflight"] == 0 and len(blue._writers) <= 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"an exchange outlived its client {(await router.client.stats())['tracks']['blue']} {len(blue._writers)}")
    assert (await router.client.stats())["tracks"]["blue"]["aborted"] == 2
    half.close()
    assert await names(router.port, 2) == {"blue": 2}
