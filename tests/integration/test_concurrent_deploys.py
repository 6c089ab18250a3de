"""Issue 13: deploys of one service released at once, through the real daemon, router and
instances. Exactly one begins; the others are answered 409 naming it, and leave nothing
behind; afterwards the live slot holds `replicas` instances of one release, which is all
the router serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.client import ApiClient, AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.errors import NotFoundError
from support import SpecMaker

CONCURRENT = 4
REPLICAS = 2


async def post_together(daemon: DaemonProcess, spec: Path, n: int = CONCURRENT) -> list[httpx.Response]:
    """`n` POST /v1/deploy, each on its own connection (opened first), sent at the same moment."""
    info = ApiClient(daemon.paths)
    clients = [httpx.AsyncClient(base_url=f"http://{info.host}:{info.port}", timeout=120,
                                 headers={"Authorization": f"Bearer {info.token}"}) for _ in range(n)]
    try:
        await asyncio.gather(*(c.get("/v1/ping") for c in clients))       # connected before the race
        go = asyncio.Event()

        async def one(c: httpx.AsyncClient) -> httpx.Response:
            await go.wait()
            return await c.post("/v1/deploy", json={"spec_path": str(spec)})
        tasks = [asyncio.create_task(one(c)) for c in clients]
        await asyncio.sleep(0)
        go.set()
        return await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


async def served(listen: str, n: int = 40) -> tuple[set[str], set[str]]:
    """What users get now: (versions, instances) over `n` new connections."""
    versions, instances = set(), set()
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(n):
            doc = (await c.get(f"http://{listen}/")).json()
            versions.add(doc["version"])
            instances.add(doc["instance"])
    return versions, instances


async def exactly_one_began(api: AsyncApiClient, responses: list[httpx.Response], round_: str) -> dict[str, Any]:
    ok = [r for r in responses if r.status_code < 300]
    assert len(ok) == 1, f"{round_}: {[(r.status_code, r.text[:200]) for r in responses]}"
    rollout = ok[0].json()["rollout"]
    for r in responses:
        if r is ok[0]:
            continue
        assert r.status_code == 409, f"{round_}: {r.status_code} {r.text[:300]}"
        doc = r.json()
        # the phase it was in when refused, which may be past the one the winner was answered with
        assert doc["error"].startswith(f"shop already has a rollout in progress ({rollout['id']}, phase "), doc
        assert "shipyard rollback shop" in doc["hint"], doc
    return rollout


async def promote_when_ready(api: AsyncApiClient, rid: str, timeout: float = 60.0) -> None:
    """Promote a manual blue-green rollout once it waits for it (a first release never waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = (await api.get(f"/v1/rollouts/{rid}"))["rollout"]["phase"]
        if phase == "awaiting_promotion":
            await api.post("/v1/services/shop/promote", {})
            return
        if phase in ("succeeded", "failed", "aborted"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rid} never reached awaiting_promotion in {timeout:.0f} s")


async def settled(api: AsyncApiClient, rollout: dict[str, Any], version: str, listen: str, round_: str) -> None:
    """The accepted rollout succeeded alone: one release live, `replicas` instances, all of it served."""
    done = await api.wait_rollout(rollout["id"], 180)
    assert done["phase"] == "succeeded", f"{round_}: {done['phase']} {done['reason']}"
    status = await api.get("/v1/services/shop")
    assert status["rollout"] is None
    live = status["slots"][status["live_slot"]]
    assert len(live["instances"]) == REPLICAS, f"{round_}: {live['instances']}"
    assert {i["image_id"] for i in live["instances"]} == {status["live_image"]}
    versions, instances = await served(listen)
    assert versions == {version}, f"{round_}: users got {versions}"
    assert instances == {i["id"] for i in live["instances"]}, f"{round_}: served by {instances}"


async def test_concurrent_api_deploys_begin_exactly_one_each_round(daemon: DaemonProcess, api: AsyncApiClient,
                                                                   make_spec: SpecMaker, listen: str) -> None:
    specs = {"1": make_spec("v1"), "2": make_spec("v2")}
    created = 0
    for k, version in enumerate(["1", "2", "1", "2", "1"], start=1):
        round_ = f"round {k} ({'first deploy' if k == 1 else 'onto a live service'}, v{version})"
        responses = await post_together(daemon, specs[version])
        rollout = await exactly_one_began(api, responses, round_)
        assert rollout["id"] == f"shop-{k}", round_
        created += 1
        await settled(api, rollout, version, listen, round_)
        history = (await api.get("/v1/services/shop/events"))["events"]
        assert len([e for e in history if e["kind"] == "rollout.created"]) == created, round_
    services = (await api.get("/v1/services"))["services"]
    assert [s["service"] for s in services] == ["shop"]


STARTING_GUN = ("import sys; from shipyard.cli import entry, app; sys.stdin.readline(); "
                "sys.argv[0] = 'shipyard'; entry.main()")
"""The CLI with its imports done, waiting for a line on stdin: process start-up (hundreds of ms
on a loaded machine, and uneven) must not serialise the deploys the test means to race."""


def sy(*args: str, state: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", STARTING_GUN, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def fire(procs: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    """Let every waiting CLI go at once, then collect what each said."""
    time.sleep(1.0)                       # all of them past their imports
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return [p.communicate(timeout=120) for p in procs]


async def test_two_concurrent_cli_deploys_begin_exactly_one(daemon: DaemonProcess, api: AsyncApiClient,
                                                            make_spec: SpecMaker, listen: str,
                                                            state_dir: Path) -> None:
    # held at awaiting_promotion until the test promotes it: onto the warm slot a blue-green deploy
    # takes ~0.3 s, less than two CLI processes can be relied on to differ by on a loaded machine
    manual = {"strategy.blue_green.auto_promote": False}
    specs = {"1": make_spec("v1", name="v1-manual", **manual), "2": make_spec("v2", name="v2-manual", **manual)}
    for k, version in enumerate(["1", "2", "1"], start=1):
        round_ = f"CLI round {k} (v{version})"
        procs = [sy("deploy", "-f", str(specs[version]), state=state_dir) for _ in range(2)]
        try:
            outs = fire(procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 3], f"{round_}: exit codes {codes}, output {outs}"
        loser = next(err for p, (_out, err) in zip(procs, outs, strict=True) if p.returncode == 3)
        rid = f"shop-{k}"
        assert f"shop already has a rollout in progress ({rid}, phase " in " ".join(loser.split()), loser
        with pytest.raises(NotFoundError):               # no twin was numbered after it
            await api.get(f"/v1/rollouts/shop-{k + 1}")
        await promote_when_ready(api, rid)
        await settled(api, {"id": rid}, version, listen, round_)
