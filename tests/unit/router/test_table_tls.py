"""RoutingTable.tls: validated, carried through the wire format, absent from old tables."""

from __future__ import annotations

import json

import pytest

from shipyard.router.table import RoutingTable, TableError, TableTls, Upstream

FP = "ab" * 32


def table(**kw: object) -> RoutingTable:
    return RoutingTable("shop", 3, {"blue": (Upstream("b", "127.0.0.1", 9001),)}, {"blue": 100}, **kw)  # type: ignore[arg-type]


def test_tls_round_trips_through_the_wire_format() -> None:
    t = table(tls=TableTls("/s/tls/x.pem", "/s/tls/x.key", FP))
    back = RoutingTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back.tls == TableTls("/s/tls/x.pem", "/s/tls/x.key", FP)
    assert back.with_weights({"blue": 100}).tls == t.tls      # a weight change keeps the certificate


def test_a_table_persisted_before_tls_loads_as_plain_http() -> None:
    d = table().to_dict()
    del d["tls"]
    assert RoutingTable.from_dict(d).tls is None
    assert table().to_dict()["tls"] is None


@pytest.mark.parametrize("tls, word", [
    ({"cert": "relative.pem", "key": "/k", "fingerprint": FP}, "tls.cert must be an absolute path"),
    ({"cert": "/c", "key": None, "fingerprint": FP}, "tls.key must be an absolute path"),
    ({"cert": "/c", "key": "/k", "fingerprint": "AB" * 32}, "64 lower-case hex"),
    ({"cert": "/c", "key": "/k", "fingerprint": "ab"}, "64 lower-case hex"),
    ("yes", "must be an object"),
])
def test_a_bad_tls_field_is_refused(tls: object, word: str) -> None:
    d = table().to_dict()
    d["tls"] = tls
    with pytest.raises(TableError, match=word):
        RoutingTable.from_dict(d)
