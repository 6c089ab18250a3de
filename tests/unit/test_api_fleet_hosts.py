"""GET /v1/hosts and POST /v1/hosts/check on the fake world: hosts of every fleet service,
one row per address with the services naming it and the instances the store has there;
a check of one service's hosts; every refusal (no token, unknown, invalid or local service)
with a status and a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.runtime.ssh.hostkeys import TrustedKey
from support.hosts_api import HostsWorld

WEB = (("web-1", "10.9.0.1"), ("web-2", "10.9.0.2"))


@pytest.fixture
def hw(tmp_path: Path) -> HostsWorld:
    w = HostsWorld(tmp_path)
    w.add_service("shop", 18080, WEB)
    w.add_service("cart", 18081, (("cart-1", "10.9.0.2"), ("cart-2", "10.9.0.3")))
    w.add_service("local", 18082, None)
    w.add_instance("shop", "shop-blue-1", "10.9.0.1", 101)
    w.add_instance("cart", "cart-blue-1", "10.9.0.2", 202)
    w.add_instance("local", "local-blue-1", "127.0.0.1", 303)
    return w


def test_every_fleet_host_once_with_its_services_and_instances(hw: HostsWorld) -> None:
    hw.reports.down["cart-2"] = "no SSH connection to cart-2 (10.9.0.3:22): connection refused"
    resp = hw.request("GET", "/v1/hosts")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["services"] == ["cart", "shop"]          # the local service has no hosts
    rows = {h["address"]: h for h in doc["hosts"]}
    assert list(rows) == ["10.9.0.2", "10.9.0.3", "10.9.0.1"]   # one row per address, first seen first
    shared = rows["10.9.0.2"]
    assert shared["name"] == "cart-1" and shared["services"] == ["cart", "shop"]
    assert shared["state"] == "up" and shared["facts"]["host"]["cpu_count"] == 2
    assert [i["id"] for i in shared["instances"]] == ["cart-blue-1"]
    assert [i["id"] for i in rows["10.9.0.1"]["instances"]] == ["shop-blue-1"]
    down = rows["10.9.0.3"]
    assert down["state"] == "unreachable" and down["reachable"] is False and down["facts"] is None
    assert down["error"] == "no SSH connection to cart-2 (10.9.0.3:22): connection refused"
    assert down["hint"] == "start its sshd"
    # each address asked once, with the ssh section of the first service naming it
    asked = sorted(name for names, _base in hw.reports.reported for name in names)
    assert asked == ["cart-1", "cart-2", "web-1"]
    assert {base for _names, base in hw.reports.reported} == {hw.root.resolve()}


def test_no_fleet_service_no_hosts(tmp_path: Path) -> None:
    w = HostsWorld(tmp_path)
    w.add_service("local", 18082, None)
    assert w.request("GET", "/v1/hosts").json() == {"services": [], "hosts": []}
    assert w.reports.reported == []


def test_check_reports_each_host_and_the_first_failed_step(hw: HostsWorld) -> None:
    hw.reports.failing["web-2"] = ("disk", "3.0 MiB free under /root/.shipyard, the image needs 1.0 MiB + 64 MiB")
    resp = hw.request("POST", "/v1/hosts/check", {"service": "shop"})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["service"] == "shop" and doc["image_id"] == "a" * 64 and doc["ok"] is False
    web1, web2 = doc["hosts"]
    assert web1["ok"] is True and web1["reason"] is None
    assert [s["name"] for s in web1["steps"]] == ["ssh", "python", "helper", "disk", "ports", "image"]
    assert web2["ok"] is False
    assert web2["reason"] == "disk: 3.0 MiB free under /root/.shipyard, the image needs 1.0 MiB + 64 MiB"
    # the service's own instances, per host address, so their listeners are not counted as foreign
    assert hw.reports.checked == [("shop", "a" * 64, {"10.9.0.1": {101}, "10.9.0.2": set()})]
    entry = hw.controller.queries.audit.entries("shop")[-1]
    assert entry.action == "hosts.check" and "via token" in entry.actor


def test_check_ok_when_every_host_passes(hw: HostsWorld) -> None:
    doc = hw.request("POST", "/v1/hosts/check", {"service": "cart"}).json()
    assert doc["ok"] is True and [h["name"] for h in doc["hosts"]] == ["cart-1", "cart-2"]


@pytest.mark.parametrize("body,status,words", [
    ({}, 400, "hosts check needs service"),
    ({"service": 3}, 400, "hosts check needs service"),
    ({"service": "Not A Name"}, 400, "is not a valid service name"),
    ({"service": "nope"}, 404, "no service named 'nope'"),
    ({"service": "local"}, 400, "runs on this machine (its spec has no fleet section)"),
])
def test_check_refusals_say_what_is_wrong(hw: HostsWorld, body: dict[str, object], status: int,
                                          words: str) -> None:
    resp = hw.request("POST", "/v1/hosts/check", body)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"] and resp.json()["hint"]
    assert hw.reports.checked == []


def test_without_the_token_nothing_is_asked(hw: HostsWorld) -> None:
    assert hw.request("GET", "/v1/hosts", token="wrong").status_code == 401
    assert hw.request("POST", "/v1/hosts/check", {"service": "shop"}, token="wrong").status_code == 401
    assert hw.reports.reported == [] and hw.reports.checked == []


def test_a_host_key_trusted_on_first_contact_is_audited_with_who_asked(hw: HostsWorld) -> None:
    hw.reports.trusted["web-1"] = TrustedKey("web-1", "10.9.0.1", 22, "ssh-ed25519", "SHA256:abc", "/k/known_hosts", 1.0)
    assert hw.request("GET", "/v1/hosts").status_code == 200
    hw.request("POST", "/v1/hosts/check", {"service": "shop"})
    trusted = [e for e in hw.controller.queries.audit.entries("shop") if e.action == "host.key_trusted"]
    assert len(trusted) == 2 and all("via token" in e.actor for e in trusted)
    assert trusted[0].why == ("first contact with web-1 (10.9.0.1:22) under fleet.ssh.trust_new_hosts: "
                              "ssh-ed25519 key SHA256:abc added to /k/known_hosts")
    assert trusted[0].evidence["fingerprint"] == "SHA256:abc"


def test_a_key_trusted_by_background_work_is_audited_as_the_daemon(hw: HostsWorld) -> None:
    """The runtime's connections (deploys, watching) get the same callback outside any request."""
    assert hw.reports.on_trust is not None
    hw.reports.on_trust(TrustedKey("web-2", "10.9.0.2", 2222, "ssh-ed25519", "SHA256:def", "/k/known_hosts", 2.0))
    entry = hw.controller.queries.audit.entries()[-1]
    assert (entry.action, entry.actor, entry.service) == ("host.key_trusted", "shipyard-daemon", None)
    assert entry.evidence["port"] == 2222 and "10.9.0.2:2222" in entry.why


def test_drain_undrain_remove_over_the_api_audited_and_shown(hw: HostsWorld) -> None:
    resp = hw.request("POST", "/v1/hosts/web-1/drain")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert (doc["name"], doc["address"], doc["state"], doc["services"]) == ("web-1", "10.9.0.1", "draining", ["shop"])
    assert [i["id"] for i in doc["instances"]] == ["shop-blue-1"]
    rows = {h["name"]: h for h in hw.request("GET", "/v1/hosts").json()["hosts"]}
    assert rows["web-1"]["state"] == "draining" and rows["cart-1"]["state"] == "up"
    assert hw.request("GET", "/v1/hosts/10.9.0.1").json()["state"] == "draining"     # by address too
    refused = hw.request("POST", "/v1/hosts/web-1/remove")
    assert refused.status_code == 409 and "still runs 1 instance(s) (shop-blue-1)" in refused.json()["error"]
    assert refused.json()["hint"] == "drain it first: shipyard hosts drain web-1; then remove it"
    removed = hw.request("POST", "/v1/hosts/cart-2/remove").json()
    assert removed["state"] == "removed" and "remove it from fleet.hosts" in removed["message"]
    assert hw.request("POST", "/v1/hosts/web-1/undrain").json()["state"] == "up"
    assert hw.request("POST", "/v1/hosts/nope/drain").status_code == 404
    assert hw.request("POST", "/v1/hosts/web-1/drain", token="wrong").status_code == 401
    actions = [(e.action, e.evidence.get("host")) for e in hw.controller.queries.audit.entries()
               if e.action.startswith("hosts.") and e.action != "hosts.check"]
    # the refused remove changed nothing: no entry (as for every request refused before a consequence)
    assert actions == [("hosts.drain", "web-1"), ("hosts.remove", "cart-2"), ("hosts.undrain", "web-1")]
