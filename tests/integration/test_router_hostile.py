"""Hostile requests against the real router (issue 11): each was a hole in the old code.

Raw sockets on one side, backends that log what they receive (parsed by a strict
parser of their own) on the other. Refused means: a 4xx from the router, the
connection closed, and not one byte of the request reached an instance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from hostile_support import PREVIEW, Plane, converse, running_plane


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    with running_plane() as p:
        yield p


@pytest.fixture(autouse=True)
def _mark(plane: Plane) -> None:
    plane.mark()


def nonce() -> str:
    return uuid.uuid4().hex


def get(n: str, extra: bytes = b"", target: bytes = b"/") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: shop\r\nX-Nonce: %s\r\n%s\r\n" % (target, n.encode(), extra)


def assert_refused(plane: Plane, data: bytes, status: int = 400, expect_in: bytes = b"") -> None:
    t0 = time.monotonic()
    (r, *more), closed = converse(plane.port, [data], expect=2)
    assert r.status == status and r.from_router, (r.status, r.body)
    assert expect_in in r.body
    assert not more and closed, "the connection must close after a refusal"
    assert time.monotonic() - t0 < 2.0
    time.sleep(0.1)
    assert plane.seen() == [], "nothing of a refused request may reach an instance"


def test_connection_naming_content_length_is_refused_not_smuggled(plane: Plane) -> None:
    # The report's attack: without Content-Length the body would be read as a second request.
    inner = get(nonce())
    outer = (b"POST /harmless HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\nConnection: content-length\r\n"
             b"X-Nonce: %s\r\n\r\n%s") % (len(inner), nonce().encode(), inner)
    assert_refused(plane, outer, expect_in=b"content-length")


def test_connection_naming_transfer_encoding_is_refused(plane: Plane) -> None:
    data = (b"POST / HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, "
            b"Transfer-Encoding\r\nX-Nonce: %s\r\n\r\n5\r\nhello\r\n0\r\n\r\n") % nonce().encode()
    assert_refused(plane, data, expect_in=b"transfer-encoding")


def test_connection_naming_host_is_refused(plane: Plane) -> None:
    assert_refused(plane, get(nonce(), b"Connection: host\r\n"), expect_in=b"host")


def test_http11_without_host_is_refused(plane: Plane) -> None:
    assert_refused(plane, b"GET / HTTP/1.1\r\nX-Nonce: %s\r\n\r\n" % nonce().encode(), expect_in=b"Host")


def test_two_host_headers_are_refused(plane: Plane) -> None:
    assert_refused(plane, get(nonce(), b"Host: other\r\n"), expect_in=b"Host")


def test_connect_is_refused_at_once_and_closed(plane: Plane) -> None:
    data = b"CONNECT shop:443 HTTP/1.1\r\nHost: shop:443\r\nContent-Length: 5\r\nX-Nonce: %s\r\n\r\nhello" % (
        nonce().encode())
    assert_refused(plane, data, status=405, expect_in=b"CONNECT")


def test_upgrade_with_a_body_is_refused_at_once_and_closed(plane: Plane) -> None:
    inner = get(nonce())
    data = (b"POST /chat HTTP/1.1\r\nHost: shop\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\nX-Nonce: %s\r\n\r\n%s") % (len(inner), nonce().encode(), inner)
    assert_refused(plane, data, expect_in=b"Upgrade")


def test_upgrade_without_a_body_is_a_plain_request(plane: Plane) -> None:
    n = nonce()
    (r,), _ = converse(plane.port, [get(n, b"Connection: upgrade\r\nUpgrade: websocket\r\n")], expect=1,
                       check_close=False)
    assert r.status == 200 and r.nonce == n
    (seen,) = plane.seen()
    assert not {h.lower() for h, _ in seen["headers"]} & {"upgrade", "connection"}


def test_a_pipelined_head_behind_a_slow_request_is_held_to_64_kib(plane: Plane) -> None:
    slow, big = nonce(), nonce()
    rss0 = plane.rss_kib()
    huge = get(big, b"X-Big: %s\r\n" % (b"a" * (8 << 20)))
    # The slow request is read alone, so the huge head arrives while an exchange is in progress.
    responses, closed = converse(plane.port, [get(slow, target=b"/slow"), huge], expect=2, timeout=6, pause=0.3)
    assert [r.nonce for r in responses if r.status == 200] in ([], [slow])
    assert all(r.status in (200, 431) for r in responses)
    assert closed
    time.sleep(0.2)
    nonces = {dict((k.lower(), v) for k, v in e["headers"]).get("x-nonce") for e in plane.seen()}
    assert big not in nonces, "a head over 64 KiB must never be forwarded"
    assert plane.rss_kib() - rss0 < 4096, "the router buffered the oversized head"


def test_trailers_do_not_become_headers_of_the_next_request(plane: Plane) -> None:
    first, second = nonce(), nonce()
    chunked = (b"POST / HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nX-Nonce: %s\r\n\r\n"
               b"5\r\nhello\r\n0\r\nX-Injected: 1\r\nHost: evil\r\n\r\n") % first.encode()
    responses, _ = converse(plane.port, [chunked + get(second)], expect=2, check_close=False)
    assert [r.nonce for r in responses] == [first, second]
    seen = plane.seen()
    assert [e["body"] for e in seen] == ["hello", ""]
    assert all(h.lower() != "x-injected" for e in seen for h, _ in e["headers"])
    assert [v for h, v in seen[1]["headers"] if h.lower() == "host"] == ["shop"]


def test_response_trailers_do_not_become_headers_of_the_next_response(plane: Plane) -> None:
    # The instance's trailer fields come after the body of its chunked response; the pooled
    # connection then carries another client's request, whose response must not get them.
    first, second = nonce(), nonce()
    (r1,), _ = converse(plane.port, [get(first, target=b"/trailer")], expect=1, check_close=False)
    assert r1.status == 200 and r1.nonce == first
    (r2,), _ = converse(plane.port, [get(second)], expect=1, check_close=False)
    assert r2.status == 200 and r2.nonce == second
    assert r2.header(b"set-cookie") is None and r2.header(b"x-trailer") is None, r2.headers
    seen = plane.seen()
    assert len(seen) == 2 and seen[0]["conn"] == seen[1]["conn"], "both must cross one pooled connection"


def test_forwarded_framing_is_rebuilt_from_what_was_parsed(plane: Plane) -> None:
    n = nonce()
    data = b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 005\r\nX-Nonce: %s\r\n\r\nhello" % n.encode()
    (r,), _ = converse(plane.port, [data], expect=1, check_close=False)
    assert r.nonce == n
    (seen,) = plane.seen()
    assert [v for h, v in seen["headers"] if h.lower() == "content-length"] == ["5"]
    assert seen["body"] == "hello"


# -- the preview route -----------------------------------------------------------------


def test_the_track_header_alone_reaches_stable(plane: Plane) -> None:
    for value in (b"green", b"preview"):
        n = nonce()
        (r,), _ = converse(plane.port, [get(n, b"X-Shipyard-Track: %s\r\n" % value)], expect=1, check_close=False)
        assert r.nonce == n
    assert plane.backends["green"].seen() == []
    assert len(plane.backends["blue"].seen()) == 2


def test_a_wrong_preview_token_reaches_stable(plane: Plane) -> None:
    n = nonce()
    extra = b"X-Shipyard-Track: green\r\nX-Shipyard-Preview-Token: %s\r\n" % PREVIEW[:-1].encode()
    (r,), _ = converse(plane.port, [get(n, extra)], expect=1, check_close=False)
    assert r.nonce == n
    assert plane.backends["green"].seen() == [] and len(plane.backends["blue"].seen()) == 1


def test_with_the_preview_token_it_reaches_the_preview_slot(plane: Plane) -> None:
    n = nonce()
    extra = b"X-Shipyard-Track: green\r\nX-Shipyard-Preview-Token: %s\r\n" % PREVIEW.encode()
    (r,), _ = converse(plane.port, [get(n, extra)], expect=1, check_close=False)
    assert r.nonce == n
    assert plane.backends["blue"].seen() == [] and len(plane.backends["green"].seen()) == 1


def test_no_x_shipyard_header_of_a_client_reaches_an_instance(plane: Plane) -> None:
    extra = (b"X-Shipyard-Track: green\r\nX-Shipyard-Preview-Token: %s\r\nx-shipyard-error: 1\r\n"
             b"X-SHIPYARD-Anything: yes\r\n") % PREVIEW.encode()
    (r,), _ = converse(plane.port, [get(nonce(), extra)], expect=1, check_close=False)
    assert r.status == 200
    (seen,) = plane.seen()
    assert [h for h, _ in seen["headers"] if h.lower().startswith("x-shipyard-")] == []


def test_a_bad_request_pipelined_behind_a_good_one_is_refused_after_it_is_answered(plane: Plane) -> None:
    good, bad = nonce(), nonce()
    data = get(good, target=b"/slow") + get(bad, b"Connection: content-length\r\n")
    responses, closed = converse(plane.port, [data], expect=3, timeout=6)
    assert [r.status for r in responses] == [200, 400] and responses[0].nonce == good
    assert responses[1].from_router and closed
    assert [dict((k.lower(), v) for k, v in e["headers"])["x-nonce"] for e in plane.seen()] == [good]


def test_a_response_whose_connection_names_content_length_keeps_its_framing(plane: Plane) -> None:
    first, second = nonce(), nonce()
    responses, _ = converse(plane.port, [get(first, target=b"/conn-names-length") + get(second)], expect=2,
                            check_close=False)
    assert [r.nonce for r in responses] == [first, second]
    assert responses[0].header(b"content-length") is not None
