"""Two services on one port by Host, end to end: the real daemon, CLI, router (each kind) and shop
instances. Both deploy (their preview checks reach each by its name), curl reaches each by
Host (and over TLS by SNI, each with its own certificate, `curl --cacert --resolve`), a third
spec claiming a name already routed is refused by `shipyard deploy` (message, exit code,
nothing recorded), and a router killed with SIGKILL comes back serving both."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.soak import router_pid
from support import SpecMaker, deploy
from support.certs import Pair, TestCA
from support.routers import router_pid as data_plane_pid

pytestmark = pytest.mark.timeout(300)

SHOP = ["shop.example.test", "*.shop.example.test"]
BLOG = ["blog.example.test"]


def sy(*args: str, state: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


def release(greeting: str) -> dict[str, str]:
    return {"release.toml": f'version = "1"\ngreeting = "{greeting}"\n'}


def specs(make_spec: SpecMaker, kind: str, shop_tls: dict[str, str] | None = None,
          blog_tls: dict[str, str] | None = None) -> tuple[Path, Path]:
    shop = make_spec("v1", "shop", domains=SHOP, tls=shop_tls,
                     **{"build.files": release("hello shop"), "router.kind": kind})
    blog = make_spec("v1", "blog", service="blog", domains=BLOG, tls=blog_tls,
                     **{"build.files": release("hello blog"), "router.kind": kind})
    return shop, blog


def greeting(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res
    return str(json.loads(res.stdout)["greeting"])


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_two_services_share_a_port_refuse_a_clash_and_survive_a_router_kill(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path, listen: str, daemon: DaemonProcess,
        kind: str) -> None:
    shop, blog = specs(make_spec, kind)
    for spec in (shop, blog):
        r = await deploy(api, spec)
        assert r["phase"] == "succeeded", r        # its preview checks reached it by its name
    url = f"http://{listen}/"
    assert greeting(curl("-H", "Host: shop.example.test", url)) == "hello shop"
    assert greeting(curl("-H", "Host: a.shop.example.test:8080", url)) == "hello shop"
    assert greeting(curl("-H", "Host: blog.example.test", url)) == "hello blog"
    res = curl("-i", "-H", "Host: nope.example.test", url)
    assert res.stdout.startswith("HTTP/1.1 404") and "nope.example.test" in res.stdout, res

    # a third spec claiming shop's name: refused with the reason, nothing recorded
    cart = make_spec("v1", "cart", service="cart", domains=["cart.example.test", "shop.example.test"],
                     **{"router.kind": kind})
    res = sy("deploy", "-f", str(cart), state=state_dir)
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert "shop.example.test is already routed to service shop on " + listen in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    bare = make_spec("v1", "wiki", service="wiki", **{"router.kind": kind})
    res = sy("deploy", "-f", str(bare), state=state_dir)
    assert res.returncode == 3 and f"{listen} is already the listen address of service" in res.stderr, res.stderr
    names = {s["service"] for s in (await api.get("/v1/services"))["services"]}
    assert names == {"shop", "blog"}

    # one data plane serves both; killed, the supervisor restarts it with both tables
    if kind == "embedded":
        pid = json.loads((daemon.paths.routers / "shop.pid").read_text())["pid"]
        assert json.loads((daemon.paths.routers / "blog.pid").read_text())["pid"] == pid
        assert router_pid(daemon.paths.root, "blog") == router_pid(daemon.paths.root, "shop") == pid
        os.kill(pid, signal.SIGKILL)
    else:
        pid = data_plane_pid(daemon.paths.root, kind)
        os.killpg(pid, signal.SIGKILL)             # HAProxy's master and worker
    deadline = time.monotonic() + 20
    new_pid = None
    while time.monotonic() < deadline:
        try:        # embedded: the pid file, written once the new router serves
            new_pid = (json.loads((daemon.paths.routers / "shop.pid").read_text())["pid"] if kind == "embedded"
                       else data_plane_pid(daemon.paths.root, kind))
        except (AssertionError, OSError, ValueError):
            new_pid = None
        if new_pid not in (None, pid):
            break
        await asyncio.sleep(0.1)
    assert new_pid not in (None, pid)
    while curl("-H", "Host: shop.example.test", url).returncode != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)              # a new HAProxy binds its sockets once it has started
    assert greeting(curl("-H", "Host: shop.example.test", url)) == "hello shop"
    assert greeting(curl("-H", "Host: blog.example.test", url)) == "hello blog"
    if kind == "embedded":
        assert json.loads((daemon.paths.routers / "shop.pid").read_text())["pid"] == new_pid
        assert json.loads((daemon.paths.routers / "blog.pid").read_text())["pid"] == new_pid
    for service in ("shop", "blog"):          # each records the crash of the router it shared (the
        while True:                           # second at its next repair check, within a second or so)
            events = (await api.get(f"/v1/services/{service}/events"))["events"]
            if any(e["kind"] == "router.restarted" and "SIGKILL" in e["message"] for e in events):
                break
            assert time.monotonic() < deadline + 5, (service, [e["kind"] for e in events])
            await asyncio.sleep(0.1)


def place(pair: Pair, state_dir: Path, name: str) -> None:
    d = state_dir / "specs" / "certs"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(pair.cert, d / f"{name}.pem")
    shutil.copy(pair.key, d / f"{name}.key")


async def served_fingerprint(port: int, ca: TestCA, server_name: str | None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    ctx.check_hostname = False
    _r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name or "")
    try:
        return hashlib.sha256(w.get_extra_info("ssl_object").getpeercert(binary_form=True)).hexdigest()
    finally:
        w.close()


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_each_service_gets_its_own_certificate_by_sni(
        api: AsyncApiClient, make_spec: SpecMaker, state_dir: Path, listen: str, kind: str) -> None:
    ca = TestCA(state_dir / "ca")
    shop_pair = ca.issue("shop", ("shop.example.test", "*.shop.example.test"))
    blog_pair = ca.issue("blog", ("blog.example.test",))
    place(shop_pair, state_dir, "shop")
    place(blog_pair, state_dir, "blog")
    shop, blog = specs(make_spec, kind, shop_tls={"cert": "certs/shop.pem", "key": "certs/shop.key"},
                       blog_tls={"cert": "certs/blog.pem", "key": "certs/blog.key"})
    for spec in (shop, blog):
        r = await deploy(api, spec)
        assert r["phase"] == "succeeded", r.get("reason")   # preview checks: Host and SNI of its own name
    port = listen.rsplit(":", 1)[1]
    for host, want in (("shop.example.test", "hello shop"), ("www.shop.example.test", "hello shop"),
                       ("blog.example.test", "hello blog")):
        res = curl("--cacert", str(ca.pem), "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/")
        assert greeting(res) == want, (host, res)     # curl checked the certificate's name too
    assert await served_fingerprint(int(port), ca, "x.shop.example.test") == shop_pair.fingerprint
    assert await served_fingerprint(int(port), ca, "blog.example.test") == blog_pair.fingerprint
    # no server name, or one no service names: the first service by name with a certificate (blog)
    assert await served_fingerprint(int(port), ca, None) == blog_pair.fingerprint
    assert await served_fingerprint(int(port), ca, "other.test") == blog_pair.fingerprint
