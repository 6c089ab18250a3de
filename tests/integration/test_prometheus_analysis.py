"""Prometheus in, end to end: a real Prometheus server (the Debian package, started here on
loopback) scrapes the daemon's /metrics every second, and a canary whose only metric is
a PromQL query over those series is judged by it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.analysis.providers.prometheus import URL_ENV
from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.demo import free_port
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker

CANARY_5XX_RATE = (
    'sum(rate(shipyard_requests_total{service="{{service}}",track="{{track}}",release="{{release}}",'
    'status_class="5xx"}[5s])) / sum(rate(shipyard_requests_total{service="{{service}}",track="{{track}}",'
    'release="{{release}}"}[5s]))')


@dataclass
class PrometheusServer:
    url: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the `prometheus` binary is not installed: apt-get install -y prometheus "
                        "(.ci/run does this)")
        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps({    # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "shipyard", "static_configs": [{"targets": [target]}]}]}))
        with open(self.directory / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}", "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.directory / "prometheus.log").read_text(errors="replace").splitlines()[-20:])
        return ""

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as c:
            body = (await c.get(f"{self.url}/api/v1/query", params={"query": promql})).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def wait_scraping(self, timeout: float = 30.0) -> None:
        """Ready, and it has scraped the daemon successfully at least once."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                last = await self.query('up{job="shipyard"}')
                if last and last[0]["value"][1] == "1":
                    return
            except (httpx.HTTPError, ValueError) as e:
                last = e
            await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus never scraped shipyard: {last!r}\n{self.log()}")


@pytest.fixture
def prometheus_server() -> Iterator[PrometheusServer]:
    server = PrometheusServer(f"http://127.0.0.1:{free_port()}", Path(tempfile.mkdtemp(prefix="sy-prom")))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
async def prom_api(state_dir: Path, prometheus_server: PrometheusServer) -> AsyncIterator[AsyncApiClient]:
    """A daemon that knows the Prometheus server from its environment, and that server scraping it."""
    daemon = DaemonProcess(state_dir, env={URL_ENV: prometheus_server.url}).start()
    client = AsyncApiClient(daemon.paths, timeout=120)
    try:
        api_url = json.loads(daemon.paths.api.read_text())["url"]
        prometheus_server.start(api_url.removeprefix("http://"))
        await prometheus_server.wait_scraping()
        yield client
    finally:
        await client.aclose()
        daemon.stop()


def prometheus_canary(make_spec: SpecMaker, version: str, name: str, steps: list[Any], metric: dict[str, Any],
                      release: str | None = None) -> Path:
    canary = {"sticky": {"header": "X-User-Id"}, "steps": steps,
              "analysis": {"interval": "1s", "metrics": [{"name": "canary-5xx", "prometheus": metric}]}}
    changes: dict[str, Any] = {"strategy": {"canary": canary}, "replicas": 2}
    if release is not None:
        changes["build.files"] = {"release.toml": release}
    return make_spec(version, name, **changes)


async def deploy(api: AsyncApiClient, spec: Path) -> dict[str, Any]:
    return (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]


async def test_prometheus_query_aborts_a_bad_canary(prom_api: AsyncApiClient, prometheus_server: PrometheusServer,
                                                    make_spec: SpecMaker, listen: str) -> None:
    metric = {"query": CANARY_5XX_RATE, "max": 0.2}
    first = await deploy(prom_api, prometheus_canary(make_spec, "v1", "p1", [{"set_weight": 50}], metric))
    assert (await prom_api.wait_rollout(first["id"], 60))["phase"] == "succeeded"

    bad = 'version = "2"\ngreeting = "hello"\nerror_rate = 0.5\n'
    steps = [{"set_weight": 50}, {"pause": "120s"}]
    async with Traffic(f"http://{listen}", clients=8, pause=0.005, users=2000) as traffic:
        r = await deploy(prom_api, prometheus_canary(make_spec, "v2", "p2", steps, metric, bad))
        took = time.monotonic()
        final = await prom_api.wait_rollout(r["id"], 90)
        took = time.monotonic() - took
        after = time.monotonic()
        await asyncio.sleep(1.0)

    assert final["phase"] == "failed", final
    assert "analysis failed: canary-5xx (prometheus): prometheus" in final["reason"], final["reason"]
    assert "> max 0.2" in final["reason"] and prometheus_server.url in final["reason"], final["reason"]
    assert took < 60
    assert set(traffic.versions(since=after)) == {"1"}           # every user back on stable

    doc = await prom_api.get(f"/v1/rollouts/{r['id']}")
    [verdict] = [v for v in doc["analysis"]["verdicts"] if v["metric"] == "canary-5xx"]
    assert verdict["status"] == "failed" and verdict["kind"] == "prometheus"
    assert verdict["value"] > 0.2 and verdict["threshold"] == 0.2
    evidence = verdict["evidence"]
    release = final["image_id"][:12]
    assert f'track="{final["target_slot"]}",release="{release}"' in evidence["query"]
    assert "{{" not in evidence["query"] and evidence["prometheus"] == prometheus_server.url
    # the series it judged are in Prometheus under the canary's labels (stale now: the canary is gone)
    series = await prometheus_server.query(
        f'max_over_time(shipyard_requests_total{{service="shop",release="{release}",status_class="5xx"}}[5m])')
    assert series and float(series[0]["value"][1]) > 0


async def test_a_query_that_finds_nothing_never_passes_an_analysis_step(
        prom_api: AsyncApiClient, make_spec: SpecMaker, listen: str) -> None:
    metric = {"query": 'sum(rate(no_such_series_total{service="{{service}}"}[5s]))', "max": 1}
    first = await deploy(prom_api, prometheus_canary(make_spec, "v1", "q1", [{"set_weight": 50}], metric))
    assert (await prom_api.wait_rollout(first["id"], 60))["phase"] == "succeeded"

    steps = [{"set_weight": 20}, {"analysis": {"duration": "2s"}}]
    async with Traffic(f"http://{listen}", clients=4, pause=0.01, users=500):
        r = await deploy(prom_api, prometheus_canary(make_spec, "v2", "q2", steps, metric))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rollout = (await prom_api.get(f"/v1/rollouts/{r['id']}"))["rollout"]
            if rollout["phase"] == "paused" and rollout["hold"] == "inconclusive" or rollout["phase"] in (
                    "succeeded", "failed", "aborted"):
                break
            await asyncio.sleep(0.2)
    assert rollout["phase"] == "paused" and rollout["hold"] == "inconclusive", rollout
    assert "empty result" in rollout["paused_reason"], rollout["paused_reason"]
    await prom_api.post("/v1/services/shop/abort", {"reason": "test over"})
    await prom_api.wait_rollout(r["id"], 60)
