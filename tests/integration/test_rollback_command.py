"""`shipyard rollback` as the `shipyard` command runs it: bash sends it to the daemon
(bin/shipyard) and only hands it to the Python CLI when it cannot. Both clients must
send the same request, treat the answer the same way, and never send a rollback twice."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker, deploy
from support.standins import OneShotDaemon

LAUNCHER = Path(__file__).resolve().parents[2] / "bin" / "shipyard"
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def run(cmd: list[str], state: Path | None = None, python_cli: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """`python_cli`: whether shipyard-py can be found (on PATH) if the launcher wants it."""
    path = f"{VENV_BIN}:{SYSTEM_PATH}" if python_cli else SYSTEM_PATH
    full = {k: v for k, v in os.environ.items() if k not in ("SHIPYARD_HOME", "SHIPYARD_NO_FAST_PATH")}
    full |= {"PATH": path, "COLUMNS": "200", **env}
    if state is not None:
        cmd = [*cmd, "--state-dir", str(state)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full)


@pytest.fixture
def alone(tmp_path: Path) -> Path:
    """The launcher on its own, with no shipyard-py beside it: if it needs Python, it says so."""
    copy = tmp_path / "bin" / "shipyard"
    copy.parent.mkdir()
    shutil.copy2(LAUNCHER, copy)
    return copy


def live_slot(api_state: Path) -> str:
    res = run([sys.executable, "-m", "shipyard", "status", "shop", "--json"], api_state)
    return json.loads(res.stdout)["live_slot"]


async def two_releases(api: AsyncApiClient, make_spec: SpecMaker, **changes: object) -> None:
    for v in ("v1", "v2"):
        done = await deploy(api, make_spec(v, f"{v}x", **changes))
        assert done["phase"] == "succeeded", done


def test_the_installed_command_is_the_launcher() -> None:
    installed = VENV_BIN / "shipyard"
    assert installed.read_bytes() == LAUNCHER.read_bytes(), "reinstall: make .venv/.installed"
    assert (VENV_BIN / "shipyard-py").exists()


async def test_bash_moves_traffic_without_starting_python(api: AsyncApiClient, daemon: DaemonProcess,
                                                          make_spec: SpecMaker, alone: Path) -> None:
    await two_releases(api, make_spec)
    state = daemon.paths.root
    seen = [live_slot(state)]
    # /bin/sh (dash here) hands over to bash; a system whose sh is bash runs the bash part directly
    noisy = alone.parent / "bashrc"
    noisy.write_text("echo sourced BASH_ENV >&2\n")          # a user's non-interactive bash start-up file
    for n, shell in enumerate(("/bin/sh", "/bin/bash"), start=3):
        res = await asyncio.to_thread(run, [shell, str(alone), "rollback", "shop"], state, python_cli=False,
                                      **({"BASH_ENV": str(noisy)} if shell == "/bin/sh" else {}))
        assert (res.returncode, res.stdout, res.stderr) == (0, f"rollback shop-{n}: succeeded\n", "")
        seen.append(live_slot(state))
    assert seen[0] != seen[1] != seen[2] == seen[0]
    audit = (await api.get("/v1/audit?service=shop"))["audit"]
    rollbacks = [a for a in audit if a["action"] == "rollback"]
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    assert [a["actor"].split(" via token ")[0] for a in rollbacks] == [f"{user}@{socket.gethostname()}"] * 2


async def test_answers_are_printed_like_the_python_cli(api: AsyncApiClient, daemon: DaemonProcess,
                                                      make_spec: SpecMaker, alone: Path) -> None:
    await deploy(api, make_spec("v1"))
    state = daemon.paths.root
    for service, code, words in (("nosuch", 4, "no service named 'nosuch'"), ("shop", 3, "no previous release")):
        bash = await asyncio.to_thread(run, [str(alone), "rollback", service], state, python_cli=False)
        py = await asyncio.to_thread(run, [str(LAUNCHER), "rollback", service], state, SHIPYARD_NO_FAST_PATH="1")
        assert bash.returncode == py.returncode == code, (bash, py)
        assert bash.stderr == py.stderr and words in bash.stderr and bash.stdout == py.stdout == ""


async def test_what_bash_does_not_handle_goes_to_python(api: AsyncApiClient, daemon: DaemonProcess,
                                                        make_spec: SpecMaker, alone: Path, tmp_path: Path) -> None:
    await two_releases(api, make_spec)
    state = daemon.paths.root
    before = live_slot(state)
    for extra in (["--json"], ["--help"], ["--state-dir"], ["shop", "extra"]):
        res = await asyncio.to_thread(run, [str(alone), "rollback", *extra], python_cli=False, SHIPYARD_HOME=str(state))
        assert res.returncode == 1 and "cannot find shipyard-py" in res.stderr, (extra, res)
    assert live_slot(state) == before                       # nothing was sent
    # a refused token: nothing happened, so Python may ask again and explain
    token = daemon.paths.root / "token"
    good = token.read_text()
    token.write_text("not-the-token\n")
    try:
        res = await asyncio.to_thread(run, [str(LAUNCHER), "rollback", "shop"], state)
    finally:
        token.write_text(good)
    assert res.returncode != 0 and "missing or wrong API token" in res.stderr, res
    assert live_slot(state) == before
    # no daemon: Python says so
    res = await asyncio.to_thread(run, [str(LAUNCHER), "rollback", "shop"], tmp_path / "empty")
    assert res.returncode == 5 and "no shipyard daemon is running" in res.stderr and "api.json" not in res.stderr
    # --json is Python's, through the launcher
    res = await asyncio.to_thread(run, [str(LAUNCHER), "rollback", "shop", "--json"], state)
    assert res.returncode == 0 and json.loads(res.stdout)["phase"] == "succeeded"
    assert live_slot(state) != before


async def test_a_cold_rollback_is_followed_to_its_end(api: AsyncApiClient, daemon: DaemonProcess,
                                                     make_spec: SpecMaker) -> None:
    await two_releases(api, make_spec, **{"strategy.blue_green.scale_down_delay": "1s"})
    for _ in range(100):
        status = await api.get("/v1/services/shop")
        if all(s["state"] in ("live", "idle") for s in status["slots"].values()):
            break
        await asyncio.sleep(0.1)
    res = await asyncio.to_thread(run, [str(LAUNCHER), "rollback", "shop"], daemon.paths.root)
    assert res.returncode == 0, res
    assert res.stdout.endswith("rollback shop-3: succeeded\n"), res.stdout
    assert "traffic switched to slot" in res.stdout           # the redeploy's events, as it went
    status = await api.get("/v1/services/shop")
    assert status["live_image"] == (await api.get("/v1/rollouts/shop-1"))["rollout"]["image_id"]


# -- a daemon that answers badly: the rollback may have happened, so it is not sent again ----


@pytest.fixture
def bad_daemons() -> Iterator[list[OneShotDaemon]]:
    made: list[OneShotDaemon] = []
    yield made
    for d in made:
        d.close()


BAD_ANSWERS = [
    (b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 21\r\n\r\nInternal Server Error",
     "was HTTP 500 without an exit code: Internal Server Error"),
    (b"", "did not come"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "was not HTTP"),
]


@pytest.mark.parametrize("reply,words", BAD_ANSWERS, ids=["500", "hang-up", "not-http"])
@pytest.mark.parametrize("client", ["bash", "python"])
def test_a_bad_answer_is_reported_and_not_retried(client: str, reply: bytes, words: str, tmp_path: Path,
                                                  bad_daemons: list[OneShotDaemon]) -> None:
    d = OneShotDaemon(reply)
    bad_daemons.append(d)
    state = d.state_dir(tmp_path / "state")
    cmd = [str(LAUNCHER)] if client == "bash" else [sys.executable, "-m", "shipyard"]
    res = run([*cmd, "rollback", "shop"], state, USER="ops", LOGNAME="ops")
    assert res.returncode == 1, res
    assert f"error: the rollback of shop was sent but the daemon's answer {words}" in res.stderr, res.stderr
    assert "shipyard status shop" in res.stderr
    assert len(d.requests) == 1                              # not a second time, by either client
    head = d.requests[0].decode().split("\r\n")
    assert head[0] == "POST /v1/services/shop/rollback HTTP/1.1"
    assert set(head[1:-2]) == {"Host: 127.0.0.1", "Authorization: Bearer t0ken", "Accept: text/plain",
                               "Content-Length: 0", f"X-Shipyard-Actor: ops@{socket.gethostname()}",
                               "Connection: close"}
