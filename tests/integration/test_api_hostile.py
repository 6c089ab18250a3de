"""The API against hostile or careless requests (issue 11, "The API" and "Spec and CLI
input"), on a real daemon: every bad value is a 4xx that names what is wrong, the daemon
keeps answering while it refuses, and what it leaves on disk is its owner's alone."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.daemonproc import DaemonProcess
from shipyard.demo import free_port
from support import SpecMaker


def _url(state_dir: Path) -> str:
    return json.loads((state_dir / "api.json").read_text())["url"]


@pytest.fixture
async def http(daemon: DaemonProcess, state_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    token = (state_dir / "token").read_text().strip()
    async with httpx.AsyncClient(base_url=_url(state_dir), timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["  a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "service: shop\nlisten: 127.0.0.1:1\nrun: {command: [x]}\nbomb:\n" + "\n".join(lines) + "\n"


# -- query values --------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "param"), [
    ("/v1/services/shop/history?limit=abc", "limit"),
    ("/v1/services/shop/history?limit=-1", "limit"),
    ("/v1/services/shop/history?limit=%E0%A5%A9", "limit"),          # a Devanagari digit: int() takes it
    ("/v1/services/shop/logs?lines=abc", "lines"),
    ("/v1/services/shop/logs?lines=-5", "lines"),
    ("/v1/services/shop/events?since=abc", "since"),
    ("/v1/services/shop/events?since=99999999999999999999999", "since"),   # beyond SQLite's integers
    ("/v1/rollouts/shop-1?since=abc", "since"),
    ("/v1/rollouts/shop-1?since=1.5", "since"),
    ("/v1/audit?limit=abc", "limit"),
    ("/v1/audit?since=-3", "since"),
    ("/v1/dashboard/series?service=shop&since=1e400", "since"),
    ("/v1/dashboard/series?service=shop&since=nan", "since"),
    ("/v1/dashboard/series?service=shop&since=inf", "since"),
    ("/v1/dashboard/series?service=shop&since=-1", "since"),
])
async def test_bad_query_values_are_400_naming_the_parameter(http: httpx.AsyncClient, path: str,
                                                            param: str) -> None:
    r = await http.get(path)
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["error"].startswith(f"query parameter {param} must be "), r.json()


async def test_good_query_values_still_work(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/audit?limit=5&since=0")).status_code == 200
    assert (await http.get("/v1/services/shop/events?since=0")).status_code == 200
    assert (await http.get("/v1/services/shop/history?limit=5")).status_code == 404     # no such service
    assert (await http.get("/v1/dashboard/series?service=shop&since=1700000000.25")).status_code == 404


@pytest.mark.parametrize("name", ["Shop", "my%20shop", "sh%C3%B6p", "shop%5B0%5D", "shop%0D%0AX-Evil:%201"])
async def test_a_service_name_outside_the_rule_is_400(http: httpx.AsyncClient, name: str) -> None:
    r = await http.get(f"/v1/services/{name}")
    assert r.status_code == 400 and "is not a valid service name" in r.json()["error"], r.text


# -- bodies and specs ----------------------------------------------------------------------------

async def test_request_bodies_are_limited_to_1_mib(http: httpx.AsyncClient) -> None:
    big = json.dumps({"spec_path": "/x", "pad": "x" * (2 * 1024 * 1024)}).encode()
    r = await http.post("/v1/deploy", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "at most 1048576 bytes (1 MiB)" in r.json()["error"], r.text

    async def chunks() -> AsyncIterator[bytes]:        # no Content-Length: counted while read
        for _ in range(40):
            yield b" " * 65536
    r = await http.post("/v1/plan", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert (await http.get("/v1/ping")).status_code == 200


async def test_deeply_nested_json_body_is_a_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/plan", content=b"[" * 200_000 + b"]" * 200_000)
    assert r.status_code == 400 and r.json()["error"] == "request body must be a JSON object", r.text


async def test_an_alias_bomb_is_refused_and_the_daemon_keeps_answering(http: httpx.AsyncClient,
                                                                      state_dir: Path) -> None:
    path = state_dir / "bomb.yaml"
    path.write_text(_bomb())
    started = time.monotonic()
    deploy = asyncio.create_task(http.post("/v1/deploy", json={"spec_path": str(path)}))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    assert (await http.get("/v1/services")).status_code == 200
    assert time.monotonic() - t0 < 1.0
    r = await deploy
    assert time.monotonic() - started < 5.0
    assert r.status_code == 400 and "once aliases are expanded; the limit is 20000" in r.json()["error"], r.text
    assert (await http.get("/v1/services")).json()["services"] == []


async def test_a_50_mb_spec_is_refused_by_size(http: httpx.AsyncClient, state_dir: Path) -> None:
    path = state_dir / "big.yaml"
    with path.open("wb") as f:
        f.write(b"service: shop\n")
        f.truncate(50 * 1024 * 1024)
    for route in ("/v1/deploy", "/v1/plan", "/v1/db/check"):
        t0 = time.monotonic()
        r = await http.post(route, json={"spec_path": str(path)})
        assert time.monotonic() - t0 < 2.0
        assert r.status_code == 400, (route, r.text)
        assert r.json()["error"] == f"big.yaml: the spec is {50 * 1024 * 1024} bytes; the limit is 1048576 bytes (1 MiB)"


async def test_an_unresolvable_listen_host_is_named(http: httpx.AsyncClient, make_spec: SpecMaker) -> None:
    spec = make_spec("v1", listen=f"no-such-host.invalid:{free_port()}")
    r = await http.post("/v1/deploy", json={"spec_path": str(spec)})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("v1.yaml: cannot resolve host no-such-host.invalid in listen: ")
    assert r.json()["hint"] == "use an IP address (like 127.0.0.1) or a name in /etc/hosts"
    assert "unknown error" not in r.text
    assert (await http.get("/v1/services")).json()["services"] == []


async def test_plan_answers_carry_secret_warnings(http: httpx.AsyncClient, make_spec: SpecMaker) -> None:
    spec = make_spec("v1", **{"run.env.DB_PASSWORD": "hunter2"})
    r = await http.post("/v1/plan", json={"spec_path": str(spec)})
    assert r.status_code == 200, r.text
    [warning] = r.json()["warnings"]
    assert warning.startswith("v1.yaml: run.env.DB_PASSWORD looks like a secret") and "secret_env" in warning
    clean = await http.post("/v1/plan", json={"spec_path": str(make_spec("v1", name="clean"))})
    assert clean.json()["warnings"] == []


# -- Host header ---------------------------------------------------------------------------------

async def test_foreign_host_headers_are_refused_even_on_public_routes(http: httpx.AsyncClient,
                                                                     state_dir: Path) -> None:
    port = int(_url(state_dir).rpartition(":")[2])
    for path in ("/v1/ping", "/v1/dashboard/services", "/v1/services", "/dashboard/"):
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"localhost.evil:{port}"):
            r = await http.get(path, headers={"Host": host})
            assert r.status_code == 421, (path, host, r.status_code)
            assert r.json()["kind"] == "HostRefused" and "--api-host" in r.json()["hint"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.2:{port}"):
        assert (await http.get("/v1/ping", headers={"Host": host})).status_code == 200, host


def test_a_request_without_host_is_refused(daemon: DaemonProcess, state_dir: Path) -> None:
    host, _, port = _url(state_dir).removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v1/ping HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 421 "), answer[:200]


@pytest.fixture
def own_daemon(state_dir: Path) -> Iterator[list[str]]:
    """A daemon started with extra `serve` options (the shared fixture takes none)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--state-dir", str(state_dir), *options],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        procs.append(proc)
        return proc
    try:
        yield start   # type: ignore[misc]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
            if proc.stderr is not None:
                proc.stderr.close()


def test_configured_api_host_names_are_accepted(own_daemon, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    proc = own_daemon("--api-host", "shipyard.internal", "--api-host", "ops.example")
    deadline = time.monotonic() + 20
    while not (state_dir / "api.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    url = _url(state_dir)
    assert httpx.get(f"{url}/v1/ping", headers={"Host": "shipyard.internal:8443"}).status_code == 200
    assert httpx.get(f"{url}/v1/ping", headers={"Host": "ops.example"}).status_code == 200
    assert httpx.get(f"{url}/v1/ping", headers={"Host": "other.example"}).status_code == 421


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "myhost.example:8080"])
def test_serve_refuses_a_network_address_without_tls(listen: str, state_dir: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "shipyard", "serve", "--state-dir", str(state_dir / "x"),
                          "--listen", listen], capture_output=True, text=True, timeout=60)
    text = " ".join(res.stderr.split())
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"refusing to listen on {listen}" in text and "in clear text" in text and "--insecure-listen" in text
    assert not (state_dir / "x").exists()


# -- the state directory -------------------------------------------------------------------------

async def test_files_in_the_state_dir_are_owner_only(http: httpx.AsyncClient, state_dir: Path,
                                                     make_spec: SpecMaker) -> None:
    spec = make_spec("v1", **{"run.env.API_TOKEN": "abc"})
    r = await http.post("/v1/deploy", json={"spec_path": str(spec)})
    assert r.status_code == 202, r.text
    assert [w.split(" looks")[0] for w in r.json()["warnings"]] == ["v1.yaml: run.env.API_TOKEN"]
    rid = r.json()["rollout"]["id"]
    for _ in range(600):
        phase = (await http.get(f"/v1/rollouts/{rid}")).json()["rollout"]["phase"]
        if phase in ("succeeded", "failed", "aborted"):
            break
        await asyncio.sleep(0.1)
    assert phase == "succeeded"
    await http.get("/v1/audit", headers={"Authorization": "Bearer wrong"})     # one more write
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm", "daemon.log", "token", "api.json"):
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name
    loose = []
    for root, dirs, files in os.walk(state_dir):
        rel = Path(root).relative_to(state_dir)
        if rel.parts[:1] in (("images",), ("specs",)):
            continue        # image trees keep their manifest's modes (inside the 0700 dir); specs are ours
        for entry in [*dirs, *files]:
            if rel == Path(".") and entry in ("daemon.out", "specs"):
                continue    # written by this test (make_spec) and its launcher (DaemonProcess), not the daemon
            mode = stat.S_IMODE(os.lstat(Path(root) / entry).st_mode)
            if mode & 0o077 and not os.path.islink(Path(root) / entry):
                loose.append(f"{rel / entry} {oct(mode)}")
    assert loose == []
    assert stat.S_IMODE((state_dir / "images").stat().st_mode) == 0o700
