"""haproxy.cfg and the map files, as text: what a table becomes, and what needs a reload."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from shipyard.errors import RouterError
from shipyard.router.haproxy import config as cfg
from shipyard.router.haproxy import sites
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.maps import MAP_KINDS, bucket_entries, map_text, token_entries, track_entries
from shipyard.router.haproxy.services import Edge, Server, ServiceConfig, server_name, service_config
from shipyard.router.table import RoutingTable, TableTls, Upstream
from support.certs import TestCA

FILES = Files(Path("/run/sy"))


def table(**kw: object) -> RoutingTable:
    ups = {"blue": (Upstream("b1", "127.0.0.1", 9001),), "green": (Upstream("g1", "127.0.0.1", 9002),)}
    kw.setdefault("weights", {"blue": 70, "green": 30})
    return RoutingTable("shop", 3, ups, bucket_order=("green", "blue"), aliases={"canary": "green"},
                        preview_token="tok-1", **kw)  # type: ignore[arg-type]


def test_maps_are_the_tables_bucket_ranges_names_and_token() -> None:
    t = table()
    assert bucket_entries(t) == [("0:2999", "green"), ("3000:9999", "blue")]
    assert track_entries(t) == [("blue", "blue"), ("green", "green"), ("canary", "green")]
    assert token_entries(t) == [("token", "tok-1")]
    assert token_entries(RoutingTable("shop")) == []
    assert bucket_entries(RoutingTable("shop")) == []  # no live track: no bucket matches (503)
    assert map_text(bucket_entries(t)) == "0:2999 green\n3000:9999 blue\n"


def test_every_bucket_range_of_a_table_agrees_with_track_at() -> None:
    t = RoutingTable("shop", 1, {"a": (), "b": (), "c": ()}, {"a": 0.01, "b": 49.99, "c": 50},
                     bucket_order=("b", "a"))
    for key, track in bucket_entries(t):
        first, last = map(int, key.split(":"))
        assert {t.track_at(b) for b in (first, last)} == {track}
    assert sum(int(k.split(":")[1]) - int(k.split(":")[0]) + 1 for k, _ in bucket_entries(t)) == 10_000


def test_the_frontend_computes_the_key_in_the_embedded_routers_order() -> None:
    text = cfg.render([service_config("127.0.0.1:8080", table(sticky_header="X-User", sticky_cookie="uid",
                                                                  sticky_client_address=True), {})],
                      FILES, "sy1 %b", "http-request set-var(txn.sy_t0) date(0,us)")
    lines = [ln.strip() for ln in text.splitlines()]
    order = [i for i, ln in enumerate(lines) if "set-var(txn.sy_key)" in ln or "set-var-fmt(txn.sy_key)" in ln]
    assert ["req.fhdr(x-user,1)" in lines[order[0]], "req.cook(uid)" in lines[order[1]],
            "%[src]" in lines[order[2]]] == [True, True, True]
    assert "if !{ var(txn.sy_key) -m found }" in lines[order[1]] and "if !{" in lines[order[2]]
    assert lines.index("http-request set-var(txn.sy_t0) date(0,us)") < order[0]
    by_key = next(i for i, ln in enumerate(lines)
                  if ln.startswith("http-request set-var(txn.sy_track) var(txn.sy_key),crc32,mod(10000),map_int("))
    by_rand = next(i for i, ln in enumerate(lines) if "rand(10000),map_int(" in ln)
    assert max(order) < by_key < by_rand and "if !{ var(txn.sy_key) -m found }" in lines[by_rand]
    strip = lines.index("http-request del-header x-shipyard- -m beg")
    assert strip > max(order) and strip > next(i for i, ln in enumerate(lines) if "x-shipyard-track" in ln)
    # unconditional: a request without a track was answered 503 by the rule before it
    assert lines.index("use_backend shop__%[var(txn.sy_track)]") > next(
        i for i, ln in enumerate(lines) if "status 503" in ln and "unless { var(txn.sy_track) -m found }" in ln)
    assert "log ring@sylog-shop local0 info" in lines
    assert "server reader unix@/run/sy/shop.log.sock" in lines and "ring sylog-shop" in lines
    assert 'log-format "sy1 %b"' in lines


def test_backends_per_track_with_limits_retries_and_state_file() -> None:
    t = table(max_conns_per_instance=7, queue_timeout=2.5)
    servers = {"blue": (Server("b1-x", "127.0.0.1", 9001),), "green": (Server("g1-x", "::1", 9002),)}
    text = cfg.render([service_config("[::1]:8080", t, servers)], FILES, "sy1")
    assert "bind ipv6@::1:8080" in text
    assert "backend shop__blue" in text and "backend shop__green" in text
    assert "server b1-x 127.0.0.1:9001 maxconn 7" in text and "server g1-x [::1]:9002 maxconn 7" in text
    assert "timeout queue 2500ms" in text
    for line in ("retries 3", "option redispatch 1", "master-worker", "load-server-state-from-file global",
                 "server-state-file /run/sy/servers.state", "option idle-close-on-response",
                 "stats socket /run/sy/admin.sock mode 600 level admin expose-fd listeners"):
        assert line in text, line


def test_only_what_the_configuration_holds_is_its_shape() -> None:
    """Weights, instances, aliases and the token change through the Runtime API; sticky names,
    limits and new track names are the configuration's (a reload)."""
    base = service_config("127.0.0.1:1", table(), {})
    assert service_config("127.0.0.1:1", table(weights={"blue": 0, "green": 100}),
                              {"blue": (Server("x", "1.2.3.4", 5),)}).shape == base.shape
    assert service_config("127.0.0.1:1", table(sticky_header="X-U"), {}).shape != base.shape
    assert service_config("127.0.0.1:1", table(max_conns_per_instance=5), {}).shape != base.shape
    assert base.tracks == ("blue", "green", "baseline")
    other = RoutingTable("shop", 1, {"a": ()}, {"a": 100})
    assert service_config("127.0.0.1:1", other, {}).tracks == ("blue", "green", "baseline", "a")


def test_names_haproxy_cannot_take_are_refused_with_the_field() -> None:
    with pytest.raises(RouterError, match="sticky header 'X User'"):
        cfg.render([ServiceConfig("shop", "127.0.0.1:1", sticky_header="X User")], FILES, "sy1")
    with pytest.raises(RouterError, match="service name 'Shop_1'"):
        cfg.render([ServiceConfig("Shop_1", "127.0.0.1:1")], FILES, "sy1")
    with pytest.raises(RouterError, match="track name 'Blue_1' of shop"):
        cfg.render([ServiceConfig("shop", "127.0.0.1:1", tracks=("Blue_1",))], FILES, "sy1")
    with pytest.raises(RouterError, match="not HOST:PORT"):
        cfg.bind_address("localhost")


def test_server_names_are_stable_unique_and_safe() -> None:
    a = server_name(Upstream("shop-blue-1 (x)", "10.0.0.1", 80))
    assert a == server_name(Upstream("shop-blue-1 (x)", "10.0.0.1", 80))
    assert a != server_name(Upstream("shop-blue-1 (x)", "10.0.0.1", 81))
    assert all(ch.isalnum() or ch in "_.-" for ch in a)


def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    """`haproxy -c` on a two-service configuration (skipped where HAProxy is not installed)."""
    import shutil
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("haproxy is not installed")
    files = Files(tmp_path)
    files.maps.mkdir()
    svcs = [service_config("127.0.0.1:18081", table(sticky_header="X-U", sticky_cookie="c"),
                               {"blue": (Server("b", "127.0.0.1", 9001),)}),
            ServiceConfig("cart", "127.0.0.1:18082", tls=True, redirect_http="127.0.0.1:18083")]
    for s in ("shop", "cart"):
        for kind in MAP_KINDS:
            files.map_file(s, kind).write_text("")
    files.cert_file("cart").parent.mkdir()
    ca = TestCA(tmp_path / "ca")
    pair = ca.issue("cart")
    files.cert_file("cart").write_text(pair.cert.read_text() + pair.key.read_text())
    files.config.write_text(sites.render(svcs, files, "sy1 %b %s"))
    done = subprocess.run([binary, "-c", "-f", str(files.config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_table_with_tls_binds_its_certificate_and_tells_instances_https() -> None:
    tls = TableTls("/state/tls/a.pem", "/state/tls/a.key", "a" * 64)
    on = service_config("127.0.0.1:8443", table(tls=tls), {})
    off = service_config("127.0.0.1:8443", table(), {})
    lines = [ln.strip() for ln in cfg.render([on], FILES, "sy1 %b").splitlines()]
    assert "bind 127.0.0.1:8443 ssl crt /run/sy/tls/shop.pem alpn http/1.1 ssl-min-ver TLSv1.2" in lines
    assert "http-request set-header x-forwarded-proto https" in lines
    plain = [ln.strip() for ln in cfg.render([off], FILES, "sy1 %b").splitlines()]
    assert "bind 127.0.0.1:8443" in plain and "http-request set-header x-forwarded-proto http" in plain
    assert on.shape != off.shape                      # turning TLS on or off is a reload
    # a rotation changes the certificate's content, never the file HAProxy knows it by: no reload
    rotated = service_config("127.0.0.1:8443", table(tls=TableTls("/state/tls/b.pem", "/state/tls/b.key",
                                                                      "b" * 64)), {})
    assert rotated.shape == on.shape


def test_the_redirect_frontend_answers_308_to_the_https_port() -> None:
    def redirect(listen: str) -> list[str]:
        svc = ServiceConfig("shop", listen, tls=True, redirect_http="127.0.0.1:8080")
        return [ln.strip() for ln in sites.redirect_frontend(svc)]
    lines = redirect("127.0.0.1:8443")
    assert lines[:2] == ["frontend redirect-shop", "bind 127.0.0.1:8080"]
    assert any(ln.startswith("http-request return status 308") and
               'hdr location "https://%[var(txn.sy_rhost)]:8443%[url]"' in ln for ln in lines)
    assert any('hdr location "https://%[var(txn.sy_rhost)]%[url]"' in ln for ln in redirect("0.0.0.0:443"))
    assert sites.redirect_frontend(ServiceConfig("shop", "127.0.0.1:8443")) == []


def test_the_redirect_accepts_the_hosts_the_embedded_redirect_accepts() -> None:
    """REDIRECT_HOST (HAProxy's regex, case-insensitive) and redirect.py's agree on every Host."""
    import re

    from shipyard.router.dataplane import redirect
    ours = re.compile(sites.REDIRECT_HOST.strip("'"), re.I)
    for host in ("shop.example.test", "Shop.Example.Test:8080", "a", "a.", "127.0.0.1:80", "[::1]", "[::1]:8443",
                 "evil.example/x", "a b", "", "-a.test", "a-.test", "a..b", "[::1", "x:99999", "x:", "é.test",
                 "a" * 63 + ".test", "a" * 64 + ".test", "host:80:80", "[::1]x"):
        assert bool(ours.fullmatch(host)) == bool(redirect.location(host.encode(), b"/", 8443)), host


def test_an_edge_record_reads_the_plain_listen_of_an_earlier_router() -> None:
    assert Edge.from_json("127.0.0.1:8080") == Edge("127.0.0.1:8080")
    edge = Edge("127.0.0.1:8443", "127.0.0.1:8080")
    assert Edge.from_json(edge.to_json()) == edge
    with pytest.raises(ValueError):
        Edge.from_json({"redirect_http": "x"})


# -- several services on one address (sites.py) ------------------------------------------------

def test_a_service_alone_without_domains_is_rendered_as_before_domains_existed() -> None:
    svcs = [service_config("127.0.0.1:8080", table(sticky_header="X-U"), {"blue": (Server("b", "127.0.0.1", 9),)}),
            ServiceConfig("cart", "127.0.0.1:8081")]
    assert sites.render(svcs, FILES, "sy1 %b", "x") == cfg.render(svcs, FILES, "sy1 %b", "x")


def test_services_sharing_an_address_are_refused_unless_each_names_its_own_domains() -> None:
    a = ServiceConfig("shop", "127.0.0.1:443", domains=("shop.test",))
    with pytest.raises(RouterError, match="cart and shop both listen on 127.0.0.1:443, and cart names no domains"):
        sites.group([a, ServiceConfig("cart", "127.0.0.1:443")])
    with pytest.raises(RouterError, match="shop and cart both claim shop.test on 127.0.0.1:443"):
        sites.group([a, ServiceConfig("cart", "127.0.0.1:443", domains=("shop.test",))])
    with pytest.raises(RouterError, match="not a lowercase host name"):
        sites.group([ServiceConfig("cart", "127.0.0.1:443", domains=("a.*.test",))])
    with pytest.raises(RouterError, match="cart serves plain HTTP on 127.0.0.1:443, which it shares with shop"):
        sites.group([replace(a, tls=True), ServiceConfig("cart", "127.0.0.1:443", tls=False, domains=("c.test",))])
    with pytest.raises(RouterError, match="already redirects"):
        sites.group([replace(a, redirect_http="127.0.0.1:80"),
                     ServiceConfig("cart", "127.0.0.1:444", redirect_http="127.0.0.1:80")])
    ok = sites.group([replace(a, tls=True), ServiceConfig("cart", "127.0.0.1:443", domains=("*.shop.test",)),
                      ServiceConfig("solo", "127.0.0.1:8080")])   # a wildcard over an exact name; no table yet
    assert {k: [s.service for s in v] for k, v in ok.items()} == {"listen-127.0.0.1-443": ["cart", "shop"],
                                                                  "solo": ["solo"]}


def test_the_host_maps_hold_exact_names_and_wildcard_suffixes_longest_first() -> None:
    svcs = [ServiceConfig("shop", "h:1", domains=("shop.test", "*.shop.test")),
            ServiceConfig("eu", "h:1", domains=("*.eu.shop.test", "*.a.test"))]
    assert sites.host_entries(svcs) == {"hosts": [("shop.test", "shop")],
                                        "wild": [(".eu.shop.test", "eu"), (".shop.test", "shop"), (".a.test", "eu")]}


def test_haproxy_accepts_a_shared_address_with_tls_and_a_redirect(tmp_path: Path) -> None:
    import shutil

    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("haproxy is not installed")
    files = Files(tmp_path)
    files.maps.mkdir()
    files.cert_file("x").parent.mkdir()
    ca = TestCA(tmp_path / "ca")
    svcs = [service_config("127.0.0.1:18443", replace(table(sticky_cookie="uid"), service=s,
                                                          tls=TableTls("/a.pem", "/a.key", "a" * 64)), {},
                               "127.0.0.1:18080", (f"{s}.test",)) for s in ("shop", "cart")]
    for svc in svcs:
        pair = ca.issue(svc.service, (f"{svc.service}.test",))
        files.cert_file(svc.service).write_text(pair.cert.read_text() + pair.key.read_text())
        for kind in MAP_KINDS:
            files.map_file(svc.service, kind).write_text("")
    for kind in sites.HOST_MAP_KINDS:
        files.map_file("listen-127.0.0.1-18443", kind).write_text("")
    text = sites.render(svcs, files, "sy1 %b %s")
    lines = [ln.strip() for ln in text.splitlines()]
    assert (f"bind 127.0.0.1:18443 ssl crt {files.cert_file('cart')} crt {files.cert_file('shop')} "
            "alpn http/1.1 ssl-min-ver TLSv1.2") in lines
    assert "use_backend shop__%[var(txn.sy_track)] if sy_for_shop" in lines
    assert sum(ln.startswith("frontend redirect-") for ln in lines) == 1
    files.config.write_text(text)
    done = subprocess.run([binary, "-c", "-f", str(files.config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_plain_request_costs_one_map_lookup() -> None:
    """Per request HAProxy evaluates every rule: without a sticky key the bucket and its track
    are one rule (one map_int lookup), and the preview token map is read only for a request
    that carries X-Shipyard-Preview-Token (benchmarks/haproxy_variants.py `routing-before`)."""
    text = cfg.render([service_config("127.0.0.1:8080", table(), {})], FILES, "sy1 %b")
    rules = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("http-request")]
    lookups = [r for r in rules if "map_" in r]
    token = next(r for r in lookups if "token.map" in r)
    assert token.endswith(" if { req.fhdr(x-shipyard-preview-token) -m found }")
    assert [r for r in lookups if "buckets.map" in r] == [
        f"http-request set-var(txn.sy_track) rand(10000),map_int({FILES.map_file('shop', 'buckets')}) "
        "unless { var(txn.sy_track) -m found }"]
    assert not [r for r in rules if "sy_bucket" in r]
