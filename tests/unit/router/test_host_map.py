"""Which service a request's host names: exact first, then the longest wildcard; the host from
the absolute-form target or Host, port cut off, lowercased; unknown hosts shown as safe text."""

from __future__ import annotations

from shipyard.router.dataplane.hosts import HostMap, body_length, host_name, not_found, request_host, shown


def test_exact_then_longest_wildcard_then_nothing() -> None:
    m = HostMap([(("shop.test", "*.shop.test"), "shop"), (("api.shop.test", "*.eu.shop.test"), "blog")])
    assert [m.lookup(h) for h in ("shop.test", "a.shop.test", "a.b.shop.test", "api.shop.test",
                                  "x.eu.shop.test", "eu.shop.test")] == ["shop", "shop", "shop", "blog", "blog", "shop"]
    assert [m.lookup(h) for h in ("test", "xshop.test", "shop.test.evil", "", None)] == [None] * 5


def test_one_service_without_domains_takes_every_host() -> None:
    m = HostMap([((), "shop")])
    assert m.every == "shop" and m.lookup(None) == "shop" and m.lookup("anything") == "shop"
    assert HostMap([(("a.test",), "a")]).every is None


def test_the_host_of_a_request() -> None:
    assert request_host(b"/x", [(b"Accept", b"*/*"), (b"HOST", b"Shop.Test:8443")]) == "shop.test"
    assert request_host(b"http://Blog.Test:81/x?y", [(b"Host", b"shop.test")]) == "blog.test"
    assert request_host(b"https://u:p@blog.test", [(b"Host", b"shop.test")]) == "blog.test"
    assert request_host(b"/", []) is None
    assert host_name("[::1]:8080") == "[::1]" and host_name("shop.test.") == "shop.test"


def test_an_unknown_host_is_shown_as_text() -> None:
    assert shown("a\x1b[31mb\\") == "a\\x1b[31mb\\x5c"
    assert shown("h" * 300).endswith("...") and shown(None) == "(none)"
    body = not_found("no service on 127.0.0.1:1 answers for host x\u00e9")
    assert body.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"Connection: close" in body
    assert body.endswith(b"host x\\xe9\n")


def test_a_head_request_gets_the_404_without_its_body() -> None:
    full, head = not_found("no service answers for host x"), not_found("no service answers for host x", head=True)
    assert head == full[:full.index(b"\r\n\r\n") + 4] and b"Content-Length: 40" in head


def test_the_body_an_unknown_host_request_must_be_read_past() -> None:
    """Its length when Content-Length tells it alone; None (the connection closes) for chunked,
    a doubtful length, or a client waiting for 100 Continue."""
    assert body_length([]) == 0
    assert body_length([(b"Accept", b"*/*"), (b"Content-Length", b" 12 ")]) == 12
    for hdrs in ([(b"Transfer-Encoding", b"chunked")], [(b"content-length", b"1"), (b"Content-Length", b"1")],
                 [(b"Content-Length", b"-1")], [(b"Content-Length", b"12"), (b"Expect", b"100-continue")]):
        assert body_length(hdrs) is None, hdrs
