"""Round-robin with ejection, and listen-address parsing."""

from __future__ import annotations

import pytest

from shipyard.errors import RouterError
from shipyard.router.dataplane.ejection import describe_connect_error
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.proxy_server import parse_listen
from shipyard.router.dataplane.routes import TrackRoute
from shipyard.router.dataplane.upstream import UpstreamState
from shipyard.router.embedded import normalize_listen
from shipyard.router.table import Upstream


def route(n: int) -> TrackRoute:
    return TrackRoute("blue", [UpstreamState(Upstream(f"u{i}", "127.0.0.1", 9000 + i)) for i in range(n)],
                      TrackMetrics())


def test_round_robin_skips_ejected_instances() -> None:
    r = route(3)
    assert [r.pick(None).id for _ in range(6)] == ["u0", "u1", "u2", "u0", "u1", "u2"]  # type: ignore
    r.upstreams[1].metrics.ejected = True
    assert [r.pick(None).id for _ in range(4)] == ["u0", "u2", "u0", "u2"]  # type: ignore


def test_a_request_never_retries_the_same_instance() -> None:
    r = route(3)
    tried = [r.upstreams[0]]
    assert r.pick(tried).id in ("u1", "u2")  # type: ignore[union-attr]
    assert r.pick(r.upstreams[:]) is None


def test_when_all_are_ejected_each_is_still_tried_once() -> None:
    r = route(2)
    for u in r.upstreams:
        u.metrics.ejected = True
    first = r.pick(None)
    assert first is not None
    second = r.pick([first])
    assert second is not None and second is not first
    assert r.pick([first, second]) is None
    assert route(0).pick(None) is None


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("8080", "127.0.0.1:", "127.0.0.1:99999", ":80", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)
    assert normalize_listen("127.0.0.1:08080") == "127.0.0.1:8080"
    with pytest.raises(RouterError):
        normalize_listen("nope")


def test_connect_errors_read_well() -> None:
    assert describe_connect_error(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert describe_connect_error(TimeoutError()) == "connect timed out after 2s"
    assert describe_connect_error(OSError(113, "No route to host")) == "no route to host"
