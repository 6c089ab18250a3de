"""The per-service preview token: derived from the daemon's secret, carried by the table,
and honoured by the data plane's routing only when it matches."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shipyard.rollout.records import Instance, ServiceRecord
from shipyard.rollout.traffic import build_table, preview_token
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.routes import RouteState, TrackRoute
from shipyard.router.dataplane.upstream import UpstreamState
from shipyard.router.table import RoutingTable, TableError, Upstream


def test_the_token_is_an_hmac_of_the_service_under_the_secret() -> None:
    want = hmac.new(b"api-token", b"preview:shop", hashlib.sha256).hexdigest()
    assert preview_token("api-token", "shop") == want
    assert preview_token("api-token", "cart") != want
    assert preview_token("other", "shop") != want


def test_build_table_carries_the_token_and_the_wire_format_keeps_it() -> None:
    svc = ServiceRecord("shop", "127.0.0.1:8080", active_slot="blue")
    inst = Instance("b0", "shop", "blue", "img", "127.0.0.1", 9001, 1, 1, "/l", "/d")
    t = build_table(svc, [(inst, "healthy")], version=3, preview_token="abc123")
    assert t.preview_token == "abc123"
    assert RoutingTable.from_dict(t.to_dict()).preview_token == "abc123"
    assert "abc123" not in repr(t)  # tables are logged; the secret is not
    assert build_table(svc, [(inst, "healthy")], version=3).preview_token is None
    assert RoutingTable.from_dict({"service": "shop"}).preview_token is None  # an older table


def test_a_token_that_cannot_be_a_header_value_is_refused() -> None:
    with pytest.raises(TableError, match="preview_token"):
        RoutingTable("shop", preview_token="a b")


def routes(token: str | None) -> RouteState:
    tracks = {"blue": (Upstream("b0", "127.0.0.1", 9001),), "green": (Upstream("g0", "127.0.0.1", 9002),)}
    table = RoutingTable("shop", 1, tracks, {"blue": 100}, preview_token=token)
    built = {n: TrackRoute(n, [UpstreamState(u) for u in ups], TrackMetrics()) for n, ups in tracks.items()}
    return RouteState(table, built)


def test_forced_tracks_need_the_matching_token() -> None:
    st = routes("s3cret")
    assert st.preview_allowed(b"s3cret")
    assert not st.preview_allowed(b"s3cre")
    assert not st.preview_allowed(b"s3cret ")
    assert not st.preview_allowed(None)
    assert not routes(None).preview_allowed(b"")  # no token in the table: forced tracks are off
    assert not routes(None).preview_allowed(b"anything")
