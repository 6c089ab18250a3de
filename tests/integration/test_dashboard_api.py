"""The dashboard's side of the API on a real daemon: its page and read endpoints need no
token and carry no secret, its series match the router's histograms, and the actions
it sends are still refused without the token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from test_canary_e2e import canary_spec, deploy, first_release, wait_for

from shipyard import histogram
from shipyard.analysis import Second
from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from shipyard.server.dashboard.views import point
from support import SpecMaker


@pytest.fixture
async def public(daemon: DaemonProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no token, as a browser that has not been unlocked."""
    url = json.loads(daemon.paths.api.read_text())["url"]
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        yield c


def test_a_point_computes_quantiles_from_the_buckets() -> None:
    fast, slow = histogram.bucket_of(2.0), histogram.bucket_of(80.0)
    p = point(Second(t=100, requests=100, errors=3, latency={fast: 98, slow: 2}))
    assert p["error_rate"] == pytest.approx(0.03)
    assert p["p50_ms"] == histogram.upper_ms(fast)
    assert p["p99_ms"] == histogram.upper_ms(slow)
    idle = point(Second.empty(101))
    assert idle["error_rate"] is None and idle["p50_ms"] is None and idle["requests"] == 0


async def busy_seconds_on_both_tracks(public: httpx.AsyncClient, n: int, timeout: float = 20) -> None:
    """Keep the traffic on until both tracks have `n` completed seconds with requests (about n s;
    longer on a loaded machine, where a fixed sleep would leave too few)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tracks = (await public.get("/v1/dashboard/series", params={"service": "shop"})).json()["tracks"]
        if len(tracks) == 2 and all(sum(1 for p in pts if p["requests"]) >= n for pts in tracks.values()):
            return
        await asyncio.sleep(0.5)


async def test_page_and_reads_are_public_and_hold_no_secret(api: AsyncApiClient, public: httpx.AsyncClient,
                                                            daemon: DaemonProcess, make_spec: SpecMaker,
                                                            listen: str) -> None:
    await first_release(api, make_spec)
    steps = [{"set_weight": 30}, {"pause": {}}]
    r = await deploy(api, canary_spec(make_spec, "v2", "dash", steps))
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, users=300):
        await wait_for(api, r["id"], lambda x: x["phase"] == "paused")
        await busy_seconds_on_both_tracks(public, 3)

    page = await public.get("/dashboard/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/dashboard/app.js"' in page.text
    for asset, kind in (("app.js", "javascript"), ("app.css", "css")):
        resp = await public.get(f"/dashboard/{asset}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"] and len(resp.content) > 1000
    assert (await public.get("/dashboard/../api.py")).status_code == 404
    assert (await public.get("/dashboard/secret.txt")).status_code == 404
    assert (await public.get("/dashboard", follow_redirects=False)).headers["location"] == "/dashboard/"

    resp = await public.get("/v1/dashboard/services")
    assert resp.status_code == 200
    [svc] = resp.json()["services"]
    tracks = {t["slot"]: t for t in svc["tracks"]}
    canary = r["target_slot"]
    stable = "green" if canary == "blue" else "blue"
    assert tracks[canary]["role"] == "canary" and tracks[stable]["role"] == "stable"
    assert svc["split"] == {stable: 70.0, canary: 30.0} and svc["split_source"] == "router"
    assert all(i["status"] == "healthy" for t in tracks.values() for i in t["instances"])
    assert len(tracks[canary]["instances"]) >= 1
    doc = svc["rollout"]
    assert doc["rollout"]["id"] == r["id"] and doc["rollout"]["phase"] == "paused"
    assert doc["steps"] == [{"set_weight": 30}, {"pause": {"duration": None}}]
    kinds = [e["kind"] for e in doc["timeline"]]
    assert "canary.weight" in kinds and "deploy" in kinds           # an event and the audit entry of the deploy
    assert any(e.get("actor") for e in doc["timeline"] if e["source"] == "audit")
    assert doc["analysis"] is not None and doc["analysis"]["verdicts"]
    token = daemon.paths.token.read_text().strip()
    assert token not in resp.text
    assert "spec" not in json.dumps(svc["tracks"])                   # no spec (and so no env) in a public read

    series = (await public.get("/v1/dashboard/series", params={"service": "shop"})).json()
    assert set(series["tracks"]) == {stable, canary}
    assert series["upto"] <= time.time()
    for slot in (stable, canary):
        pts = series["tracks"][slot]
        assert [p["t"] for p in pts] == sorted(p["t"] for p in pts)
        busy = [p for p in pts if p["requests"]]
        assert len(busy) >= 3, (slot, pts[-10:])
        assert all(p["p50_ms"] is not None and p["p50_ms"] <= p["p99_ms"] for p in busy)
    assert sum(p["requests"] for p in series["tracks"][stable]) > sum(p["requests"] for p in series["tracks"][canary])
    later = (await public.get("/v1/dashboard/series", params={"service": "shop", "since": series["upto"]})).json()
    assert all(p["t"] > series["upto"] for pts in later["tracks"].values() for p in pts)

    assert (await public.get("/v1/dashboard/series", params={"service": "nope"})).status_code == 404
    assert (await public.get("/v1/dashboard/series")).status_code == 400
    assert (await public.get("/v1/dashboard/services/nope")).status_code == 404


async def test_actions_need_the_token(api: AsyncApiClient, public: httpx.AsyncClient, make_spec: SpecMaker,
                                      daemon: DaemonProcess) -> None:
    await first_release(api, make_spec)
    r = await deploy(api, canary_spec(make_spec, "v2", "dash", [{"set_weight": 20}, {"pause": {}}]))
    await wait_for(api, r["id"], lambda x: x["phase"] == "paused")
    for action in ("promote", "abort", "rollback"):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            resp = await public.post(f"/v1/services/shop/{action}", json={}, headers=headers)
            assert resp.status_code == 401, (action, resp.text)
    assert (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["phase"] == "paused"
    assert (await public.get("/v1/services")).status_code == 401   # the full API stays behind the token
    resp = await public.post("/v1/services/shop/abort", json={},
                             headers={"Authorization": f"Bearer {daemon.paths.token.read_text().strip()}"})
    assert resp.status_code == 200 and resp.json()["rollout"]["phase"] == "aborted"
