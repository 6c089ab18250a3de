"""HAProxy log lines -> the judge's per-track series: the parser on lines captured from
HAProxy 2.6.12 (LOG_FORMAT and START_RULE, `log unix@... format rfc5424` / `rfc3164`),
garbage, second boundaries, the 600 s ring and the shared latency buckets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from shipyard.errors import RouterError
from shipyard.histogram import bucket_of
from shipyard.router.dataplane.metrics import SERIES_SECONDS, TrackMetrics
from shipyard.router.haproxy.log_lines import LOG_FORMAT, parse, split_backend
from shipyard.router.haproxy.logs import MAX_TRACKS, TrafficLog

# Captured from /usr/sbin/haproxy 2.6.12 on 2026-12-03 (frontend with START_RULE and LOG_FORMAT).
H5424 = b"<134>1 2026-12-03T13:47:37.639872+00:00 - haproxy 16096 - - "
H3164 = b"<134>Dec  3 13:47:37 localhost haproxy[16096]: "
OK = b"sy1 svc__blue b1 200 0 0 -- 50 1796305657639165 1796305657639831\n"            # 666 us
SERVER_500 = b"sy1 svc__green g1 500 0 1 -- 50 1796305674284280 1796305674285003\n"      # the instance's 500
NO_SERVER = b"sy1 svc__empty <NOSRV> 503 0 0 SC 217 1796305657646322 1796305657646322\n"  # backend without servers
REFUSED = b"sy1 svc__refused n1 503 0 0 SC 217 1796305657999510 1796305657999577\n"      # connect refused, retries 0
SLOW = b"sy1 svc__green g1 200 0 303 -- 50 1796305657653540 1796305657956607\n"
CUT = b"sy1 svc__green g1 200 0 51 SD 61 1796305658030607 1796305658082053\n"            # instance died mid-body
TIMEOUT = b"sy1 svc__green g1 504 0 1002 sH 198 1796305658097059 1796305659099358\n"     # timeout server 1s
OTHER = b"sy1 other o1 200 0 0 -- 50 1796305659111868 1796305659112419\n"                # not <service>__<track>
HEADLESS = b"sy1 fe <NOSRV> 400 -1 100 CR 0 - 1796305659540178\n"                       # head never completed


def line(body: bytes, head: bytes = H5424) -> bytes:
    return head + body


@pytest.mark.parametrize("head", [H5424, H3164, b""], ids=["rfc5424", "rfc3164", "raw"])
def test_real_lines_parse_in_every_syslog_format(head: bytes) -> None:
    r = parse(line(OK, head))
    assert r is not None
    assert (r.backend, r.server, r.status, r.term, r.bytes, r.head) == ("svc__blue", "b1", 200, "--", 50, True)
    assert r.ms == pytest.approx(0.666)  # microseconds from START_RULE, not Ta's whole milliseconds
    r = parse(line(NO_SERVER, head))
    assert r is not None and (r.server, r.status, r.term, r.ms) == ("<NOSRV>", 503, "SC", 0.0)
    r = parse(line(SLOW, head))
    assert r is not None and r.ms == pytest.approx(303.067)


def test_without_the_start_stamp_latency_is_ta_minus_tr() -> None:
    r = parse(line(b"sy1 svc__blue b1 200 7 310 -- 50 - 1796305657639831\n"))
    assert r is not None and r.ms == 303.0  # the 7 ms the head took to arrive are not the instance's


def test_log_format_carries_only_names_and_numbers() -> None:
    fields = LOG_FORMAT.split()
    assert fields[1:8] == ["%b", "%s", "%ST", "%TR", "%Ta", "%ts", "%B"]
    for banned in ("%r", "%H", "%hr", "%hs", "%CC", "%CS", "%ci", "req.hdr", "url", "path"):
        assert banned not in LOG_FORMAT


@pytest.mark.parametrize("data", [
    b"", b"\n", b"garbage", b"sy1", b"sy1 \n", OK[:30], OK.replace(b" 200 ", b" 2OO "),
    OK.replace(b"\n", b" extra\n"), OK.replace(b"svc__blue", b"svc__blue\xff"), b"\xff" * 70000,
    OK.replace(b"sy1", b"sy2"), line(OK.replace(b" -- ", b" - - ")), OK.replace(b"svc__blue", b'svc__"x"'),
    b"<134>1 - - - - - - sy1 " + b"9" * 5000,
])
def test_malformed_datagrams_are_counted_and_ignored(data: bytes) -> None:
    log = TrafficLog("svc")
    log.feed(data, time.time())
    assert log.counters["malformed"] == 1 and log.counters["records"] == 0
    assert log.stats()["tracks"] == {}


def test_a_host_named_like_the_marker_does_not_hide_the_line() -> None:
    r = parse(b"<134>1 2026-12-03T13:47:37.639872+00:00 sy1 haproxy 16096 - - " + OK)
    assert r is not None and r.backend == "svc__blue"


def test_accounting_matches_the_embedded_router() -> None:
    log = TrafficLog("svc")
    now = time.time()
    for data in (OK, SERVER_500, NO_SERVER, REFUSED, CUT, TIMEOUT, OTHER, HEADLESS,
                 b"sy1 svc__green g1 -1 0 20 CH 0 1796305658030607 1796305658082053\n",   # client left
                 b"sy1 svc__green g1 503 0 900 sQ 0 1796305658030607 1796305658082053\n",  # queue timeout
                 b"sy1 svc__green g1 403 0 0 PR 0 1796305658030607 1796305658030607\n",    # a deny rule
                 b"sy1 shop__blue s1 200 0 0 -- 50 1796305658030607 1796305658030607\n"):  # another service
        log.feed(line(data), now)
    st = log.stats()
    assert set(st["tracks"]) == {"blue", "green", "empty", "refused"}
    green = st["tracks"]["green"]
    assert set(green) == set(TrackMetrics().snapshot())  # the embedded router's shape, key for key
    # 500 (instance), 502 (cut short), 504, -1 (client left), 503 (queue), 403
    assert green["requests"] == 6 and green["aborted"] == 1 and green["queue_timeouts"] == 1
    assert green["status"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 1, "5xx": 4}
    assert green["errors"] == 3  # HAProxy's 504 and 503 and the cut response; not the instance's 500
    assert green["latency"]["count"] == 5
    assert st["tracks"]["empty"]["errors"] == 1 and st["tracks"]["empty"]["status"]["5xx"] == 1
    assert st["upstreams"]["n1"] == {"track": "refused", "requests": 1, "inflight": 0, "connect_failures": 1,
                                     "silent": 0, "ejected": False}
    assert "<NOSRV>" not in st["upstreams"]
    assert st["log"] == {"messages": 12, "records": 9, "malformed": 0, "incomplete": 1, "untracked": 1,
                         "other_service": 1, "over_limit": 0}
    s = log.series(0)["series"]
    assert s["green"] == []  # all in the second still open
    log2 = TrafficLog("svc")
    for data in (SERVER_500, CUT, TIMEOUT):
        log2.feed(line(data), now - 2)
    (point,) = log2.series(0)["series"]["green"]
    assert (point["t"], point["requests"], point["errors"]) == (int(now - 2), 3, 3)  # every status >= 500


def test_seconds_are_cut_at_receipt_and_only_completed_ones_returned() -> None:
    log = TrafficLog("svc")
    base = int(time.time()) - 5
    for t in (base + 0.0, base + 0.999, base + 1.0, base + 3.5):
        log.feed(line(OK), t)
    log.feed(line(OK), time.time())  # the open second: never reported
    out = log.series(0)
    assert out["now"] >= base + 5
    assert [(p["t"], p["requests"]) for p in out["series"]["blue"]] == [(base, 2), (base + 1, 1), (base + 3, 1)]
    assert [p["t"] for p in log.series(base + 1)["series"]["blue"]] == [base + 3]  # since is exclusive


def test_the_ring_keeps_the_last_600_seconds_only() -> None:
    log = TrafficLog("svc")
    now = int(time.time())
    for t in range(now - 1000, now - 1):
        log.feed(line(OK), t + 0.5)
    points = log.series(0)["series"]["blue"]
    assert len(points) <= SERIES_SECONDS and points[0]["t"] >= now - SERIES_SECONDS - 1
    assert points[-1]["t"] == now - 2
    assert len(log._services["svc"].tracks["blue"].ring) <= SERIES_SECONDS


def test_latency_lands_in_the_shared_histogram_buckets() -> None:
    log = TrafficLog("svc")
    t = time.time() - 3
    micros = (51, 666, 3200, 303067, 1002000)
    for us in micros:
        log.feed(line(b"sy1 svc__blue b1 200 0 0 -- 50 1000000 %d\n" % (1000000 + us)), t)
    (point,) = log.series(0)["series"]["blue"]
    assert point["latency"] == {str(bucket_of(us / 1000)): 1 for us in micros}
    assert len(point["latency"]) == 5


def test_names_are_capped_so_made_up_backends_cannot_grow_memory() -> None:
    log = TrafficLog("svc")
    for i in range(MAX_TRACKS + 5):
        log.feed(line(OK.replace(b"svc__blue", b"svc__t%d" % i)), time.time())
    assert len(log.stats()["tracks"]) == MAX_TRACKS and log.counters["over_limit"] == 5


def test_track_of_and_the_shared_log() -> None:
    assert split_backend("svc__blue") == ("svc", "blue")
    for bad in ("svc", "svc__", "__blue", "Svc__blue", "svc__blue__x", "svc_blue", "fe"):
        assert split_backend(bad) is None, bad
    assert TrafficLog("svc").track_of("svc__green") == "green"
    assert TrafficLog("svc").track_of("shop__green") is None
    shared = TrafficLog()
    shared.feed(line(OK), time.time() - 2)
    shared.feed(line(OK.replace(b"svc__blue", b"shop__green")), time.time() - 2)
    assert shared.track_of("shop__green") == "green"
    assert list(shared.series(0, "shop")["series"]) == ["green"]
    assert list(shared.stats("svc")["tracks"]) == ["blue"]
    with pytest.raises(ValueError):
        shared.series(0)


def test_a_shared_frontends_own_404s_are_unknown_hosts_and_nothing_else_is() -> None:
    """The 404 a shared frontend (sites.py) answers itself for a host no service names is
    counted as the listener's unknown host, in no track; its other answers stay untracked, and
    a service's 404 stays that service's."""
    shared = TrafficLog()
    unknown = b"sy1 listen-127.0.0.1-8080 <NOSRV> 404 0 0 LR 180 1796305659111868 1796305659111900\n"
    for data in (unknown, unknown, OK.replace(b" 200 ", b" 404 "),
                 unknown.replace(b" 404 ", b" 400 "), unknown.replace(b"listen-", b"solo-")):
        shared.feed(line(data), time.time())
    st = shared.stats("svc")
    assert st["unknown_host"] == {"requests": 2, "status": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 2, "5xx": 0}}
    assert st["tracks"]["blue"]["status"]["4xx"] == 1 and st["log"]["untracked"] == 2


async def test_the_socket_is_private_and_read_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    log = TrafficLog("svc")
    await log.start(path)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert sorted(os.listdir(tmp_path)) == ["log.sock"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for data in (line(OK), b"junk", line(NO_SERVER, H3164)):
                s.sendto(data, os.fspath(path))
        st = log.stats()  # reads what is waiting
        assert st["log"]["messages"] == 3 and st["log"]["records"] == 2 and st["log"]["malformed"] == 1
    finally:
        await log.close()
    assert not path.exists()
    await log.close()  # twice is harmless


async def test_a_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    path.write_text("precious")
    with pytest.raises(RouterError, match="not a socket"):
        await TrafficLog("svc").start(path)
    assert path.read_text() == "precious"


async def test_the_ring_stream_splits_lines_across_reads(tmp_path: Path) -> None:
    path = tmp_path / "ring.sock"
    log = TrafficLog("svc")
    await log.start_stream(path)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        data = line(OK) + line(NO_SERVER) + b"junk\n" + b"x" * 9000 + b"\n" + line(OK, H3164)
        for i in range(0, len(data), 7):  # a line arrives in many pieces
            writer.write(data[i:i + 7])
            await writer.drain()
        writer.close()
        for _ in range(100):
            if log.counters["messages"] + log.counters["malformed"] >= 4:
                break
            await asyncio.sleep(0.01)
        c = log.counters
        assert c["records"] == 3 and c["messages"] == 4 and c["malformed"] == 2  # junk, and 9000 x's cut off
        assert log.stats()["tracks"]["blue"]["requests"] == 2
    finally:
        await log.close()
    assert not path.exists()
