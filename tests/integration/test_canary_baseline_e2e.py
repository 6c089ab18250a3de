"""A canary with a baseline end to end, on both routers: a real daemon, real shop instances,
real users. The baseline (the stable release started with the canary) takes as many users
as the canary, appears on HAProxy without a reload, and is gone after promote and abort."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_canary_e2e import deploy, wait_for
from test_metrics_export import scrape
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker
from support.routers import haproxy_worker_pid

USERS = [f"user-{i}" for i in range(1000)]


def spec(make_spec: SpecMaker, version: str, name: str, kind: str) -> Path:
    canary: dict[str, Any] = {"sticky": {"header": "X-User-Id"}, "baseline": True,
                              "analysis": {"min_requests": 20, "interval": "1s"},
                              "steps": [{"set_weight": 20}, {"pause": {}}]}
    return make_spec(version, name, **{"strategy": {"canary": canary}, "replicas": 2, "router.kind": kind})


async def answered_by(listen: str) -> dict[str, tuple[str, str]]:
    """user -> (version, instance) of the answer to each user's GET /."""
    async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=httpx.Timeout(10, pool=None),
                                 limits=httpx.Limits(max_connections=32)) as c:
        async def one(u: str) -> tuple[str, str]:
            resp = await c.get("/", headers={"X-User-Id": u})
            assert resp.status_code == 200, resp.text
            return resp.headers["x-shop-version"], resp.headers["x-shop-instance"]
        return dict(zip(USERS, await asyncio.gather(*(one(u) for u in USERS)), strict=True))


async def at_twenty_percent(api: AsyncApiClient, make_spec: SpecMaker, listen: str, kind: str,
                            daemon: DaemonProcess) -> tuple[dict, set[str]]:
    """v1 serving, v2 canary at 20 % with its baseline: checks the split, returns (rollout, baseline ids)."""
    first = await api.wait_rollout((await deploy(api, spec(make_spec, "v1", "b1", kind)))["id"], 60)
    assert first["phase"] == "succeeded", first
    worker = haproxy_worker_pid(daemon.paths.root) if kind == "haproxy" else None
    r = await deploy(api, spec(make_spec, "v2", "b2", kind))
    r = await wait_for(api, r["id"], lambda x: x["phase"] == "paused" and x["weight"] == 20, timeout=90)
    status = await api.get("/v1/services/shop")
    base = status["slots"]["baseline"]
    assert base["state"] == "baseline" and base["image"] == status["live_image"]          # the stable release
    ids = {i["id"] for i in base["instances"]}
    assert len(ids) == 1 and [i["status"] for i in base["instances"]] == ["healthy"]   # as many as the canary
    got = answered_by_track(await answered_by(listen), ids)
    assert abs(got["canary"] - 200) < 60 and abs(got["baseline"] - 200) < 60, got     # ~20 % each of 1000
    assert got["canary"] + got["baseline"] + got["stable"] == len(USERS)
    weights = (await scrape(daemon)).select("shipyard_track_weight_percent", service="shop", track="baseline")
    assert list(weights.values()) == [20.0], weights                  # /metrics: track="baseline"
    served = (await scrape(daemon)).select("shipyard_upstream_requests_total", service="shop", track="baseline")
    assert {dict(k)["instance"] for k, v in served.items() if v > 0} == ids, served
    if worker is not None:
        assert haproxy_worker_pid(daemon.paths.root) == worker      # the baseline backend needed no reload
    return r, ids


async def baseline_gone(api: AsyncApiClient) -> dict:
    """The service's status once the baseline slot is idle and empty (the teardown runs after the
    rollout is stored as ended, old slot first), within 10 s."""
    for _ in range(100):
        status = await api.get("/v1/services/shop")
        if status["slots"]["baseline"]["instances"] == [] and status["slots"]["baseline"]["state"] == "idle":
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"the baseline is still there: {status['slots']['baseline']}")


def answered_by_track(got: dict[str, tuple[str, str]], baseline_ids: set[str]) -> Counter[str]:
    return Counter("canary" if v == "2" else "baseline" if i in baseline_ids else "stable" for v, i in got.values())


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_an_aa_canary_with_a_baseline_is_promoted_and_the_baseline_goes(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, kind: str, daemon: DaemonProcess) -> None:
    worker = None
    r, ids = await at_twenty_percent(api, make_spec, listen, kind, daemon)
    if kind == "haproxy":
        worker = haproxy_worker_pid(daemon.paths.root)
    doc = await api.get(f"/v1/rollouts/{r['id']}")
    assert doc["analysis"]["reference"] == "baseline"
    await api.post("/v1/services/shop/promote", {})
    final = await api.wait_rollout(r["id"], 60)
    assert final["phase"] == "succeeded", final
    await baseline_gone(api)
    got = await answered_by(listen)
    assert {v for v, _ in got.values()} == {"2"} and not {i for _, i in got.values()} & ids
    if worker is not None:
        assert haproxy_worker_pid(daemon.paths.root) == worker


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_an_aborted_canary_takes_its_baseline_with_it(
        api: AsyncApiClient, make_spec: SpecMaker, listen: str, kind: str, daemon: DaemonProcess) -> None:
    r, ids = await at_twenty_percent(api, make_spec, listen, kind, daemon)
    aborted = (await api.post("/v1/services/shop/abort"))["rollout"]
    assert aborted["phase"] == "aborted" and aborted["weight"] == 0, aborted
    got = await answered_by(listen)                     # right after the abort returned
    assert {v for v, _ in got.values()} == {"1"} and not {i for _, i in got.values()} & ids
    final = await api.wait_rollout(r["id"], 30)
    assert final["phase"] == "aborted"
    await baseline_gone(api)
