"""The control ops of a router serving several services on one address: serve / forget
(persisted), per-service ops routed by their `service`, refusals that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.router.dataplane.control_hosts import ListenControl, load_services
from shipyard.router.dataplane.proxy import open_planes
from shipyard.router.dataplane.proxy_server import ProxyServer
from shipyard.router.table import RoutingTable, Upstream


def table(service: str, version: int) -> dict:  # type: ignore[type-arg]
    return RoutingTable(service, version, {"blue": (Upstream("blue-0", "127.0.0.1", 9001),)},
                        {"blue": 100}).to_dict()


def test_services_join_and_leave_and_ops_go_to_theirs(tmp_path: Path) -> None:
    server = ProxyServer(None, "127.0.0.1:8080")
    services = tmp_path / "services.json"
    ctl = ListenControl(server, services, lambda: None)
    ok = ctl.handle({"op": "serve", "service": "shop", "domains": ["shop.test", "*.shop.test"],
                     "table": str(tmp_path / "shop.table.json")})[0]
    assert ok == {"ok": True, "service": "shop", "domains": ["shop.test", "*.shop.test"]}
    assert ctl.handle({"op": "set_table", "table": table("shop", 3)})[0] == {"ok": True, "version": 3}  # the only one
    assert ctl.handle({"op": "serve", "service": "blog", "domains": ["blog.test"],
                       "table": str(tmp_path / "blog.table.json")})[0]["ok"]
    assert ctl.handle({"op": "set_table", "table": table("shop", 4)})[0]["error"].startswith("name the service")
    assert ctl.handle({"op": "set_table", "service": "blog", "table": table("blog", 1)})[0]["ok"]
    assert ctl.handle({"op": "set_table", "service": "blog", "table": table("shop", 5)})[0]["error"] == (
        "the table is for service 'shop' but this router serves 'blog'")
    ping = ctl.handle({"op": "ping"})[0]
    assert ping["services"] == {"blog": {"domains": ["blog.test"], "version": 1},
                                "shop": {"domains": ["shop.test", "*.shop.test"], "version": 3}}
    assert "service" not in ping
    stats = ctl.handle({"op": "stats", "service": "shop"})[0]["stats"]
    assert stats["version"] == 3 and stats["listener"]["services"] == ["blog", "shop"]
    assert json.loads((tmp_path / "shop.table.json").read_text())["version"] == 3
    assert set(load_services(services)) == {"shop", "blog"}
    assert "does not serve 'cart'" in ctl.handle({"op": "get_table", "service": "cart"})[0]["error"]

    # refused: a name taken, no domains on a shared address; nothing changes
    for bad in ({"service": "cart", "domains": ["shop.test"]}, {"service": "cart", "domains": []},
                {"service": "Cart!", "domains": ["c.test"]}, {"service": "cart", "domains": ["C:1"]}):
        reply = ctl.handle({"op": "serve", "table": str(tmp_path / "c.json"), **bad})[0]
        assert reply["ok"] is False, bad
    assert set(server.planes) == {"shop", "blog"} and set(load_services(services)) == {"shop", "blog"}

    # a restarted router serves both again, each from its own table
    again = ProxyServer(None, "127.0.0.1:8080")
    open_planes(again, services)
    assert {n: p.table.version for n, p in again.planes.items()} == {"shop": 3, "blog": 1}
    assert again.hosts.lookup("a.shop.test") is again.planes["shop"]

    assert ctl.handle({"op": "forget", "service": "shop"})[0] == {"ok": True, "forgotten": True, "left": ["blog"]}
    assert set(load_services(services)) == {"blog"} and server.hosts.lookup("shop.test") is None
    assert ctl.handle({"op": "get_table"})[0]["table"]["service"] == "blog"    # the only one left
