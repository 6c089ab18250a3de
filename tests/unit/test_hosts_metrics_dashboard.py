"""Fleet hosts on /metrics and on the dashboard, from the store and the Fleet port's
unreachable_since only (FakeHostReports is never asked: no SSH per scrape or poll): state per
host (up, unreachable while silent, draining, removed), seconds silent, instances per host
and service; the dashboard's values are the data as given (the page sets them as text)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.hosts_api import HostsWorld


@pytest.fixture
def hw(tmp_path: Path) -> HostsWorld:
    w = HostsWorld(tmp_path)
    w.add_service("shop", 18080, (("web-1", "10.9.0.1"), ("web-2", "10.9.0.2"), ("web-3", "10.9.0.3")))
    w.add_service("cart", 18081, (("cart-1", "10.9.0.2"),))
    w.add_service("local", 18082, None)
    w.add_instance("shop", "shop-blue-1", "10.9.0.1", 101)
    w.add_instance("shop", "shop-blue-2", "10.9.0.2", 102)
    w.add_instance("cart", "cart-blue-1", "10.9.0.2", 202)
    w.add_instance("shop", "shop-blue-3", "10.9.0.3", 103, status="stopped")
    w.add_instance("local", "local-blue-1", "127.0.0.1", 303)
    return w


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_show_each_host_state_silence_and_instances(hw: HostsWorld) -> None:
    hw.world.clock._t = 100.0
    hw.world.fleet.silence("10.9.0.1", 88.0)
    assert hw.request("POST", "/v1/hosts/web-3/remove").status_code == 200
    resp = hw.request("GET", "/metrics", token="")
    assert resp.status_code == 200, resp.text
    up = samples(resp.text, "shipyard_fleet_host_up")       # 10.9.0.2 is named as cart (first by name) names it
    assert up == {(("address", "10.9.0.1"), ("host", "web-1")): 0, (("address", "10.9.0.2"), ("host", "cart-1")): 1,
                  (("address", "10.9.0.3"), ("host", "web-3")): 0}
    state = {dict(k)["host"]: dict(k)["state"] for k, v in samples(resp.text, "shipyard_fleet_host_state").items()
             if v == 1}
    assert state == {"web-1": "unreachable", "cart-1": "up", "web-3": "removed"}
    assert len(samples(resp.text, "shipyard_fleet_host_state")) == 3 * 5          # every state of every host
    silent = {dict(k)["host"]: v for k, v in samples(resp.text, "shipyard_fleet_host_silent_seconds").items()}
    assert silent == {"web-1": 12.0, "cart-1": 0.0, "web-3": 0.0}
    insts = {(dict(k)["host"], dict(k)["service"]): v
             for k, v in samples(resp.text, "shipyard_fleet_host_instances").items()}
    assert insts == {("web-1", "shop"): 1, ("cart-1", "shop"): 1, ("cart-1", "cart"): 1, ("web-3", "shop"): 0}
    assert hw.reports.reported == [] and hw.reports.checked == []       # no host was asked anything


def test_the_dashboard_lists_hosts_with_state_and_instances(hw: HostsWorld) -> None:
    hw.add_service("odd", 18083, (("odd-1", "10.9.0.9"),))
    assert hw.request("POST", "/v1/hosts/web-2/drain").status_code == 200
    doc = hw.request("GET", "/v1/dashboard/services", token="").json()
    rows = {h["name"]: h for h in doc["hosts"]}
    assert [h["name"] for h in doc["hosts"]] == ["cart-1", "odd-1", "web-1", "web-3"]   # services by name
    assert rows["cart-1"]["address"] == "10.9.0.2" and rows["cart-1"]["state"] == "draining"
    assert rows["cart-1"]["services"] == ["cart", "shop"] and rows["cart-1"]["instances"] == {"shop": 1, "cart": 1}
    assert rows["web-1"] == {"name": "web-1", "address": "10.9.0.1", "state": "up", "services": ["shop"],
                             "silent_seconds": None, "instances": {"shop": 1}}
    assert rows["odd-1"]["instances"] == {} and hw.reports.reported == []


def test_no_fleet_no_hosts_panel(tmp_path: Path) -> None:
    w = HostsWorld(tmp_path)
    w.add_service("local", 18082, None)
    assert w.request("GET", "/v1/dashboard/services", token="").json()["hosts"] == []
    assert "shipyard_fleet_host_up" not in {f.name for f in text_string_to_metric_families(
        w.request("GET", "/metrics", token="").text) if f.samples}
