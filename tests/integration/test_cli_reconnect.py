"""`shipyard deploy --wait` follows its rollout across a daemon restart (SIGTERM or kill -9,
then a new daemon on the same state dir, listening on a new port): it says once that the
daemon went away, reconnects, and exits with the rollout's outcome. A daemon that does not
come back within SHIPYARD_RECONNECT_TIMEOUT ends it with a message naming the rollout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker, deploy

PAUSE = 10
"""The canary's pause: long enough to restart a daemon inside it on a busy machine."""


def canary(make_spec: SpecMaker, version: str, steps: list[Any]) -> Path:
    return make_spec(version, f"{version}-canary", **{"replicas": 2, "strategy": {"canary": {
        "steps": steps, "analysis": {"min_requests": 20, "interval": "1s"}}}})


def start_cli(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "shipyard", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "SHIPYARD_HOME": str(state_dir), "COLUMNS": "200", **(env or {})})


async def paused_rollout(api: AsyncApiClient, timeout: float = 60) -> dict[str, Any]:
    """The rollout `deploy --wait` started, once it holds its pause."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = (await api.get("/v1/services/shop")).get("rollout")
        if last and last["image_id"] and last["phase"] == "paused":
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"the canary never reached its pause; last: {last}")


def finish(cli: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    try:
        stdout, stderr = cli.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        cli.kill()
        stdout, stderr = cli.communicate()
        raise AssertionError(f"deploy --wait still running after {timeout}s:\n{stdout}\n{stderr}") from None
    return cli.returncode, stdout, stderr


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_deploy_wait_follows_its_rollout_across_a_daemon_restart(state_dir: Path, make_spec: SpecMaker,
                                                                       how: signal.Signals) -> None:
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    cli: subprocess.Popen[str] | None = None
    try:
        assert (await deploy(api, canary(make_spec, "v1", [{"set_weight": 50}])))["phase"] == "succeeded"
        spec = canary(make_spec, "v2", [{"set_weight": 20}, {"pause": f"{PAUSE}s"}])
        cli = start_cli(state_dir, "deploy", "-f", str(spec), "--wait")
        r = await paused_rollout(api)
        old_url = json.loads(daemon.paths.api.read_text())["url"]
        await api.aclose()
        daemon.stop(how)
        await asyncio.sleep(1.0)                    # the CLI finds nobody there for a while
        daemon = DaemonProcess(state_dir).start()
        api = AsyncApiClient(daemon.paths)
        assert json.loads(daemon.paths.api.read_text())["url"] != old_url     # it must re-read where to go
        code, stdout, stderr = finish(cli)
        assert code == 0, (stdout, stderr)
        assert f"deploy {r['id']} succeeded" in stdout, stdout
        assert stderr.count("the daemon went away; reconnecting") == 1, stderr
        assert f"(rollout {r['id']} is still " in stderr, stderr      # the phase it last saw
        assert "reconnected to the daemon" in stderr, stderr
        final = (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]
        assert final["phase"] == "succeeded", final
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.communicate()
        await api.aclose()
        daemon.stop()


async def test_deploy_wait_gives_up_on_a_daemon_that_stays_away(state_dir: Path, make_spec: SpecMaker) -> None:
    daemon = DaemonProcess(state_dir).start()
    api = AsyncApiClient(daemon.paths)
    cli: subprocess.Popen[str] | None = None
    try:
        assert (await deploy(api, canary(make_spec, "v1", [{"set_weight": 50}])))["phase"] == "succeeded"
        spec = canary(make_spec, "v2", [{"set_weight": 20}, {"pause": f"{PAUSE}s"}])
        cli = start_cli(state_dir, "deploy", "-f", str(spec), "--wait", env={"SHIPYARD_RECONNECT_TIMEOUT": "2"})
        r = await paused_rollout(api)
        await api.aclose()
        daemon.stop(signal.SIGKILL)
        began = time.monotonic()
        code, stdout, stderr = finish(cli, timeout=30)
        waited = time.monotonic() - began
        assert code == 5, (code, stdout, stderr)
        assert 1.5 <= waited <= 15, waited
        assert "the daemon went away; reconnecting" in stderr, stderr
        assert f"following rollout {r['id']}" in stderr and "within 2s" in stderr, stderr
        assert "shipyard status" in stderr and "Traceback" not in stderr, stderr
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.communicate()
        await api.aclose()
        daemon.stop()
