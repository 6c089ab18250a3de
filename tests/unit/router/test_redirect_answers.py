"""The redirect listener's answers: 308 to the https side of the Host the client sent, never
anywhere else; 400 when the request gives nothing safe to redirect to."""

from __future__ import annotations

import pytest

from shipyard.router.dataplane.redirect import location, respond


@pytest.mark.parametrize("host, target, port, expect", [
    (b"shop.example.test", b"/a?b=1", 443, b"https://shop.example.test/a?b=1"),
    (b"shop.example.test:80", b"/", 443, b"https://shop.example.test/"),
    (b"shop.example.test:8081", b"/x", 8443, b"https://shop.example.test:8443/x"),
    (b"SHOP.Example.test", b"/", 443, b"https://shop.example.test/"),
    (b"127.0.0.1:8081", b"/p", 18443, b"https://127.0.0.1:18443/p"),
    (b"[::1]:8081", b"/p", 443, b"https://[::1]/p"),
    (b"shop.example.test", b"//evil.example/x", 443, b"https://shop.example.test//evil.example/x"),
])
def test_location_is_the_https_side_of_what_the_client_asked_for(host: bytes, target: bytes, port: int,
                                                                 expect: bytes) -> None:
    assert location(host, target, port) == expect


@pytest.mark.parametrize("host, target", [
    (b"evil.example/x", b"/"), (b"user@evil.example", b"/"), (b"a b", b"/"), (b"", b"/"),
    (b"shop.example.test\r\nSet-Cookie: x=1", b"/"), (b"shop.example.test", b"http://evil.example/"),
    (b"shop.example.test", b"*"), (b"shop.example.test", b"/a b"), (b"shop.example.test", b"/\x7f"),
])
def test_nothing_else_becomes_a_location(host: bytes, target: bytes) -> None:
    assert location(host, target, 443) is None


def test_respond_answers_308_with_location_and_closes() -> None:
    out = respond(b"GET /cart?id=7 HTTP/1.1\r\nHost: shop.example.test:8081\r\nAccept: */*", 8443)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 308 Permanent Redirect"
    assert b"Location: https://shop.example.test:8443/cart?id=7" in lines
    assert b"Connection: close" in lines
    assert int(next(ln for ln in lines if ln.startswith(b"Content-Length:")).split(b":")[1]) == len(body)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1",                                                          # no Host
    b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example",                    # two
    b"GET http://evil.example/ HTTP/1.1\r\nHost: shop.example.test",            # absolute form
    b"garbage",
    b"GET / SPDY/3\r\nHost: shop.example.test",
])
def test_respond_refuses_what_it_cannot_redirect_safely(head: bytes) -> None:
    out = respond(head, 443)
    assert out.startswith(b"HTTP/1.1 400 ") and b"Location:" not in out
