"""Bad inputs a user can hit at deploy time: each is refused with a clear message, and
nothing half-done is left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.errors import ConflictError, RouterError, ShipyardError
from support import SpecMaker, deploy


async def test_listen_address_in_use_is_refused_and_nothing_recorded(api: AsyncApiClient, make_spec: SpecMaker,
                                                                     listen: str) -> None:
    host, port = listen.split(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        with pytest.raises(RouterError) as e:
            await api.post("/v1/deploy", {"spec_path": str(make_spec("v1"))})
    assert f"cannot listen on {listen}" in e.value.message and "in use" in e.value.message
    assert (await api.get("/v1/services"))["services"] == []
    assert (await deploy(api, make_spec("v1")))["phase"] == "succeeded"    # once the port is free


async def test_changing_listen_is_refused(api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    await deploy(api, make_spec("v1"))
    moved = make_spec("v2", "moved", listen="127.0.0.1:1")
    with pytest.raises(ConflictError) as e:
        await api.post("/v1/deploy", {"spec_path": str(moved)})
    assert f"listens on {listen}" in e.value.message and "shipyard remove shop" in (e.value.hint or "")
    assert (await api.get("/v1/services/shop"))["rollout"] is None


async def test_build_step_failure_fails_the_rollout(api: AsyncApiClient, make_spec: SpecMaker) -> None:
    spec = make_spec("v1", "badbuild", **{"build.steps": [["python3", "-c", "import sys; print('boom'); sys.exit(3)"]]})
    r = await deploy(api, spec)
    assert r["phase"] == "failed"
    assert "build failed" in r["reason"] and "exit" in r["reason"] and "boom" in r["reason"], r["reason"]


async def test_crashing_release_reports_its_log(api: AsyncApiClient, make_spec: SpecMaker) -> None:
    await deploy(api, make_spec("v1"))
    crash = make_spec("v2", "crash", **{"run.command": ["python3", "-m", "no_such_module_here"]})
    r = await deploy(api, crash)
    assert r["phase"] == "failed"
    assert "exited" in r["reason"] and "no_such_module_here" in r["reason"], r["reason"]
    status = await api.get("/v1/services/shop")
    assert status["slots"][r["target_slot"]]["instances"] == []


async def test_missing_command_and_missing_secret(api: AsyncApiClient, make_spec: SpecMaker) -> None:
    await deploy(api, make_spec("v1"))
    nocmd = make_spec("v2", "nocmd", **{"run.command": ["no-such-binary-xyz"]})
    r = await deploy(api, nocmd)
    assert r["phase"] == "failed" and "no-such-binary-xyz" in r["reason"], r["reason"]
    nosecret = make_spec("v2", "nosecret", **{"run.secret_env": ["SHOP_DB_PASSWORD_FOR_TEST"]})
    r = await deploy(api, nosecret)
    assert r["phase"] == "failed"
    assert "SHOP_DB_PASSWORD_FOR_TEST" in r["reason"] and "not set in the daemon's environment" in r["reason"]


async def test_secret_reaches_the_instance_but_not_the_api(state_dir: Path, make_spec: SpecMaker) -> None:
    secret = "s3cr3t-value-never-shown"
    daemon = DaemonProcess(state_dir, env={"SHOP_TOKEN": secret}).start()
    api = AsyncApiClient(daemon.paths)
    try:
        r = await deploy(api, make_spec("v1", "withsecret", **{"run.secret_env": ["SHOP_TOKEN"]}))
        assert r["phase"] == "succeeded", r
        status = await api.get("/v1/services/shop")
        pid = status["slots"][r["target_slot"]]["instances"][0]["pid"]
        assert f"SHOP_TOKEN={secret}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        everything = str(status) + str(await api.get(f"/v1/rollouts/{r['id']}")) + str(await api.get("/v1/images"))
        assert secret not in everything
        assert secret not in (state_dir / "daemon.log").read_text()
    finally:
        await api.aclose()
        daemon.stop()


def test_second_daemon_on_the_same_state_dir_is_refused(daemon: DaemonProcess) -> None:
    with pytest.raises(ShipyardError) as e:
        DaemonProcess(daemon.paths.root).start(timeout=10)
    assert "exited with code" in e.value.message
    assert "another shipyard daemon is already running" in daemon.output.read_text()
    res = subprocess.run([sys.executable, "-m", "shipyard", "status", "--state-dir", str(daemon.paths.root)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr          # the first daemon is untouched and still answers
