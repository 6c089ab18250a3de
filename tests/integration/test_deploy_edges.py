"""Two edges of `deploy` with the real daemon, router and instances: a change of run.secret_env
alone is a new release (the instance sees the new secret, nothing shows its value), and a
first release that never becomes healthy leaves nothing behind - no service, no router on
the port - so the next deploy starts from scratch."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.errors import NotFoundError
from support import SpecMaker, deploy

TOKEN = "first-secret-5d1e0a"
NEXT = "rotated-secret-9b77c3"


@pytest.fixture
def secret_daemon(state_dir: Path) -> Iterator[DaemonProcess]:
    dp = DaemonProcess(state_dir, env={"SHOP_TOKEN": TOKEN, "SHOP_TOKEN_NEXT": NEXT}).start()
    try:
        yield dp
    finally:
        dp.stop()


@pytest.fixture
async def secret_api(secret_daemon: DaemonProcess) -> AsyncIterator[AsyncApiClient]:
    client = AsyncApiClient(secret_daemon.paths, timeout=120)
    try:
        yield client
    finally:
        await client.aclose()


def environ_of(status: dict, slot: str) -> list[bytes]:
    pids = [i["pid"] for i in status["slots"][slot]["instances"]]
    assert pids, status["slots"][slot]
    return [Path(f"/proc/{pid}/environ").read_bytes() for pid in pids]


async def test_a_deploy_whose_only_change_is_secret_env_rolls_out(secret_api: AsyncApiClient, make_spec: SpecMaker,
                                                                  state_dir: Path, listen: str) -> None:
    api = secret_api
    first = make_spec("v1", "token", **{"run.secret_env": ["SHOP_TOKEN"]})
    r1 = await deploy(api, first)
    assert r1["phase"] == "succeeded", r1
    assert all(f"SHOP_TOKEN={TOKEN}".encode() in e for e in environ_of(await api.get("/v1/services/shop"),
                                                                       r1["target_slot"]))
    same = await deploy(api, first)
    assert same["phase"] == "succeeded" and "nothing to do" in same["reason"], same    # unchanged: a no-op

    rotated = make_spec("v1", "token-next", **{"run.secret_env": ["SHOP_TOKEN_NEXT"]})
    r2 = await deploy(api, rotated)
    assert r2["phase"] == "succeeded" and "nothing to do" not in r2["reason"], r2
    assert r2["image_id"] == r1["image_id"] and r2["target_slot"] != r1["target_slot"]    # same image, new release
    status = await api.get("/v1/services/shop")
    assert status["live_slot"] == r2["target_slot"]
    for env in environ_of(status, r2["target_slot"]):
        assert f"SHOP_TOKEN_NEXT={NEXT}".encode() in env and b"SHOP_TOKEN=" not in env
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://{listen}/")).status_code == 200

    detail = await api.get(f"/v1/rollouts/{r2['id']}")
    assert any("run.secret_env" in e["message"] and "SHOP_TOKEN_NEXT" in e["message"]
               for e in detail["events"]), detail["events"]
    everything = str(status) + str(detail) + str(await api.get("/v1/services/shop/history"))
    for value in (TOKEN, NEXT):
        assert value not in everything
        assert value not in (state_dir / "daemon.log").read_text()


def port_is_free(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


async def test_a_first_deploy_that_never_gets_healthy_leaves_nothing_behind(
        api: AsyncApiClient, daemon: DaemonProcess, make_spec: SpecMaker, listen: str) -> None:
    sick = make_spec("v1", "sick", **{"health.path": "/never-healthy", "health.start_timeout": "2s"})
    r = await deploy(api, sick)
    assert r["phase"] == "failed" and "did not become healthy" in r["reason"], r

    deadline = time.monotonic() + 30        # the rollout is stored as ended just before its teardown
    while True:
        try:
            await api.get("/v1/services/shop")
        except NotFoundError:
            break
        assert time.monotonic() < deadline, "the service of a failed first release is still registered"
        await asyncio.sleep(0.1)
    assert (await api.get("/v1/services"))["services"] == []
    res = subprocess.run([sys.executable, "-m", "shipyard", "status", "shop", "--state-dir", str(daemon.paths.root)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "no service named 'shop'" in res.stdout + res.stderr, (res.stdout, res.stderr)

    host, port = listen.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=5):
        pass                                                  # no router answers 503 there any more
    assert port_is_free(listen)
    kept = await api.get(f"/v1/rollouts/{r['id']}")        # the rollout and its events are kept, as `remove` keeps them
    assert kept["rollout"]["phase"] == "failed"
    assert any(e["kind"] == "service.unregistered" and "port is free" in e["message"] for e in kept["events"])
    assert any(e["action"] == "deploy" for e in (await api.get("/v1/audit?service=shop"))["audit"])

    good = await deploy(api, make_spec("v1"))
    assert good["phase"] == "succeeded", good
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://{listen}/")).status_code == 200
