"""A hung instance (SIGSTOP: it still accepts connections, it never answers) is found
unhealthy by the daemon about as fast as the router ejects it, then replaced and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from shipyard.client import AsyncApiClient
from support import SpecMaker, deploy

FOUND_WITHIN = 4.0
"""health: timeout 2s, interval 100ms, unhealthy_threshold 3 -> 2.2 s from the hang, plus a busy machine."""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"    # a zombie is dead, only not reaped yet
    except OSError:
        return True


async def live_instances(api: AsyncApiClient) -> list[dict[str, Any]]:
    status = await api.get("/v1/services/shop")
    return status["slots"][status["live_slot"]]["instances"]


async def test_a_hung_instance_is_marked_unhealthy_fast_replaced_and_stopped(api: AsyncApiClient,
                                                                            make_spec: SpecMaker) -> None:
    spec = make_spec("v1", **{"health.timeout": "2s", "health.unhealthy_threshold": 3, "replicas": 2})
    assert (await deploy(api, spec))["phase"] == "succeeded"
    victim = (await live_instances(api))[0]
    await asyncio.sleep(1.0)                      # a few healthy probes first: a steady state
    stopped = time.monotonic()
    os.killpg(victim["pid"], signal.SIGSTOP)
    try:
        found: float | None = None
        deadline = stopped + 30
        while time.monotonic() < deadline:
            now = {i["id"]: i for i in await live_instances(api)}
            if found is None and now.get(victim["id"], {}).get("status", "unhealthy") != "healthy":
                found = time.monotonic() - stopped
            if found is not None and victim["id"] not in now and \
                    sum(i["status"] == "healthy" for i in now.values()) == 2:
                break
            await asyncio.sleep(0.05)
        assert found is not None, "the hung instance was never marked unhealthy"
        print(f"marked unhealthy {found:.2f}s after SIGSTOP")
        assert found <= FOUND_WITHIN, f"marked unhealthy {found:.2f}s after SIGSTOP (want <= {FOUND_WITHIN}s)"
        now = {i["id"]: i for i in await live_instances(api)}
        assert victim["id"] not in now and sum(i["status"] == "healthy" for i in now.values()) == 2, now
        events = (await api.get("/v1/services/shop/events"))["events"]
        assert any(e["kind"] == "instance.unhealthy" and victim["id"] in e["message"] for e in events), events[-5:]
        assert any(e["kind"] == "instance.replaced" for e in events), events[-5:]
        # the daemon stops the hung process itself: SIGTERM then SIGCONT, so it need not wait out
        # stop_timeout (10 s) for the SIGKILL
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not gone(victim["pid"]):
            await asyncio.sleep(0.1)
        assert gone(victim["pid"]), f"the hung instance (pid {victim['pid']}) is still there"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim["pid"], signal.SIGCONT)
            os.killpg(victim["pid"], signal.SIGKILL)
