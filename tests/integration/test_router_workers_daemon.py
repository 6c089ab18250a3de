"""router.workers: 2 through the daemon: a blue-green switch of the shop example under load
from keep-alive clients, and every request sent after the deploy returned is answered by v2,
whichever worker took its connection; both workers' counts reach the metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from test_router_support import RawClient

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker, deploy

pytestmark = pytest.mark.timeout(120)


def _worker_pids(state: Path) -> set[int]:
    return {int(json.loads(f.read_text())["pid"]) for f in (state / "router").glob("listen-*.pid")}


async def test_a_switch_with_two_workers_is_served_by_both(api: AsyncApiClient, daemon: DaemonProcess,
                                                           make_spec: SpecMaker, listen: str) -> None:
    assert (await deploy(api, make_spec("v1", **{"router.workers": 2})))["phase"] == "succeeded"
    assert len(_worker_pids(Path(daemon.paths.root))) == 2
    port = int(listen.rpartition(":")[2])
    answers: list[tuple[float, str]] = []
    failed: list[str] = []
    stop = False

    async def client() -> None:
        c = await RawClient.open(port)
        try:
            while not stop:
                sent = time.monotonic()
                r = await asyncio.wait_for(c.request(headers={"Host": "shop"}), 10)
                if r.status != 200:
                    failed.append(f"{r.status} {r.body[:80]!r}")
                else:
                    answers.append((sent, r.json()["version"]))
                await asyncio.sleep(0.01)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            failed.append(repr(e))
        finally:
            c.close()

    tasks = [asyncio.create_task(client()) for _ in range(12)]
    try:
        await asyncio.sleep(0.5)
        assert (await deploy(api, make_spec("v2", **{"router.workers": 2})))["phase"] == "succeeded"
        switched = time.monotonic()
        await asyncio.sleep(1.0)
    finally:
        stop = True
        await asyncio.gather(*tasks)
    assert not failed, failed[:5]
    after = {v for sent, v in answers if sent > switched}
    assert after == {"2"}, after
    assert {v for _, v in answers} == {"1", "2"}
    url = json.loads(daemon.paths.api.read_text())["url"]
    async with httpx.AsyncClient(timeout=10) as http:
        metrics = (await http.get(f"{url}/metrics")).text
    served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("shipyard_requests_total{") and 'service="shop"' in line)
    assert served >= len(answers)       # both workers' counts (one alone would show about half)
    assert len(_worker_pids(Path(daemon.paths.root))) == 2
