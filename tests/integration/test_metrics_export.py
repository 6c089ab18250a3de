"""/metrics against a real daemon and real traffic through the router, read back with
prometheus-client's own parser: counters grow by exactly the requests sent, the latency
histogram is consistent, the rollout gauges follow a live canary, verdict counters appear
once its analysis is over, and the Grafana dashboard only asks for series that exist."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_router_support import ROUTER_KINDS

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "shipyard.json"

Key = tuple[str, tuple[tuple[str, str], ...]]


class Scrape:
    """One parsed /metrics: samples by (name, sorted labels), and the families' types."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.samples: dict[Key, float] = {}
        for fam in self.families:
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, f"duplicate sample {key}"
                self.samples[key] = s.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def select(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {k[1]: v for k, v in self.samples.items()
                if k[0] == name and all(dict(k[1]).get(n) == want for n, want in labels.items())}

    def exposed_names(self) -> set[str]:
        """Every series name a PromQL query could use, including empty families."""
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        return {fam.name + s for fam in self.families for s in suffixes.get(fam.type, [""])}


async def scrape(daemon: DaemonProcess) -> Scrape:
    url = json.loads(daemon.paths.api.read_text())["url"]
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{url}/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain"), resp.text
    return Scrape(resp.text)


async def until_scrape(daemon: DaemonProcess, pred, timeout: float = 10) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        m = await scrape(daemon)
        if pred(m) or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.1)


def assert_monotonic(before: Scrape, after: Scrape) -> None:
    for fam in after.families:
        if fam.type not in ("counter", "histogram"):
            continue
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in before.samples:
                assert s.value >= before.samples[key], f"{key} went down: {before.samples[key]} -> {s.value}"


def assert_histograms_consistent(m: Scrape) -> None:
    fam = next(f for f in m.families if f.name == "shipyard_request_duration_seconds")
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for s in fam.samples:
        if s.name.endswith("_bucket"):
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(labels, []).append((float(s.labels["le"]), s.value))
    assert series, "no latency histogram"
    for labels, buckets in series.items():
        bounds = [b for b, _ in buckets]
        counts = [c for _, c in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds) and bounds[-1] == float("inf"), bounds
        assert counts == sorted(counts), f"{labels}: bucket counts are not cumulative: {counts}"
        assert counts[-1] == m.get("shipyard_request_duration_seconds_count", **dict(labels))
        total = sum(v for k, v in m.select("shipyard_requests_total", **dict(labels)).items())
        assert counts[-1] == total, f"{labels}: histogram count {counts[-1]} != responses by status {total}"
        if counts[-1]:
            assert m.get("shipyard_request_duration_seconds_sum", **dict(labels)) > 0


async def deploy(api: AsyncApiClient, spec: Path) -> dict[str, Any]:
    return (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]


def canary_spec(make_spec: SpecMaker, version: str, name: str, steps: list[Any]) -> Path:
    canary = {"sticky": {"header": "X-User-Id"}, "analysis": {"min_requests": 20, "interval": "1s"}, "steps": steps}
    return make_spec(version, name, **{"strategy": {"canary": canary}, "replicas": 1})


async def test_traffic_counters_histogram_and_instances(api: AsyncApiClient, daemon: DaemonProcess,
                                                        make_spec: SpecMaker, listen: str) -> None:
    r = await api.wait_rollout((await deploy(api, make_spec("v1")))["id"], 60)
    assert r["phase"] == "succeeded", r
    status = await api.get("/v1/services/shop")
    track, release = status["live_slot"], status["live_image"][:12]
    labels = {"service": "shop", "track": track, "release": release}

    before = await scrape(daemon)
    ok, missing = 37, 5
    async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=10) as c:
        for _ in range(ok):
            assert (await c.get("/")).status_code == 200
        for _ in range(missing):
            assert (await c.get("/no-such-page")).status_code == 404

    def counted(m: Scrape) -> bool:
        return m.get("shipyard_requests_total", **labels, status_class="4xx") - \
            before.get("shipyard_requests_total", **labels, status_class="4xx") >= missing

    after = await until_scrape(daemon, counted)
    grew = {cls: after.get("shipyard_requests_total", **labels, status_class=cls)
            - before.get("shipyard_requests_total", **labels, status_class=cls)
            for cls in ("1xx", "2xx", "3xx", "4xx", "5xx")}
    assert grew == {"1xx": 0, "2xx": ok, "3xx": 0, "4xx": missing, "5xx": 0}
    count = "shipyard_request_duration_seconds_count"
    assert after.get(count, **labels) - before.get(count, **labels) == ok + missing
    assert after.get("shipyard_request_duration_seconds_bucket", **labels, le="+Inf") == after.get(count, **labels)
    assert_histograms_consistent(after)
    assert_monotonic(before, after)

    assert after.get("shipyard_router_up", service="shop") == 1
    assert after.get("shipyard_track_weight_percent", **labels) == 100
    instances = status["slots"][track]["instances"]
    assert instances
    for inst in instances:
        assert after.get("shipyard_instance_healthy", service="shop", instance=inst["id"], slot=track,
                         release=release) == (1 if inst["status"] == "healthy" else 0)
    assert after.select("shipyard_instance_healthy", service="shop").keys() == {
        tuple(sorted({"service": "shop", "instance": i["id"], "slot": track, "release": release}.items()))
        for i in instances}
    info = after.select("shipyard_daemon_info")
    assert len(info) == 1 and dict(next(iter(info)))["version"] and dict(next(iter(info)))["enforcement"]
    assert after.get("shipyard_rollouts_total", service="shop", kind="deploy", strategy="blue_green",
                     outcome="succeeded") == 1
    assert after.get("shipyard_rollout_phase", service="shop", phase="succeeded") == 1
    assert sum(after.select("shipyard_rollout_phase", service="shop").values()) == 1


@pytest.mark.parametrize("kind", ROUTER_KINDS)
async def test_unknown_host_requests_are_one_series_of_the_listen_address(api: AsyncApiClient, daemon: DaemonProcess,
                                                                            make_spec: SpecMaker, listen: str,
                                                                            kind: str) -> None:
    """A service naming its domains, on either router: requests for other hosts are answered 404
    and counted in shipyard_unknown_host_requests_total{listen}, in none of its tracks."""
    spec = make_spec("v1", **{"domains": ["shop.test"], "router.kind": kind})
    r = await api.wait_rollout((await deploy(api, spec))["id"], 60)
    assert r["phase"] == "succeeded", r
    before = await scrape(daemon)
    unknown, known = 7, 4
    async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=10,
                                 limits=httpx.Limits(max_connections=1)) as c:
        for _ in range(unknown):
            resp = await c.get("/", headers={"Host": "nope.test"})
            assert resp.status_code == 404 and b"nope.test" in resp.content
        for _ in range(known):
            assert (await c.get("/", headers={"Host": "shop.test"})).status_code == 200

    def series(m: Scrape) -> float:
        return m.get("shipyard_unknown_host_requests_total", listen=listen)

    after = await until_scrape(daemon, lambda m: series(m) - series(before) >= unknown)
    assert series(after) - series(before) == unknown
    assert len(after.select("shipyard_unknown_host_requests_total")) == 1
    four = sum(after.select("shipyard_requests_total", service="shop", status_class="4xx").values())
    assert four == sum(before.select("shipyard_requests_total", service="shop", status_class="4xx").values())
    assert_monotonic(before, after)


async def test_a_slot_that_takes_a_new_release_counts_it_from_zero(api: AsyncApiClient, daemon: DaemonProcess,
                                                                   make_spec: SpecMaker, listen: str) -> None:
    async def release(spec: Path, requests: int) -> tuple[str, str]:
        r = await api.wait_rollout((await deploy(api, spec))["id"], 60)
        assert r["phase"] == "succeeded", r
        async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=10) as c:
            for _ in range(requests):
                assert (await c.get("/")).status_code == 200
        return r["target_slot"], r["image_id"][:12]

    slot_a, first = await release(make_spec("v1"), 5)
    slot_b, _ = await release(make_spec("v2"), 2)
    slot_c, third = await release(make_spec("v1", "v1-debug", **{"run.env.LOG_LEVEL": "debug"}), 3)
    assert slot_c == slot_a != slot_b and third != first            # the same slot, another image
    served = 2 + 3          # its two preview checks (through the router) and the three requests above
    m = await until_scrape(daemon, lambda m: m.get("shipyard_requests_total", service="shop", track=slot_a,
                                                   release=third, status_class="2xx") >= served)
    assert m.get("shipyard_requests_total", service="shop", track=slot_a, release=third, status_class="2xx") == served
    assert m.select("shipyard_requests_total", release=first) == {}   # its series ended with it
    assert m.get("shipyard_request_duration_seconds_count", service="shop", track=slot_a, release=third) == served


async def test_canary_gauges_and_verdict_counters(api: AsyncApiClient, daemon: DaemonProcess,
                                                  make_spec: SpecMaker, listen: str) -> None:
    first = await deploy(api, canary_spec(make_spec, "v1", "c1", [{"set_weight": 50}]))
    assert (await api.wait_rollout(first["id"], 60))["phase"] == "succeeded"
    steps = [{"set_weight": 30}, {"analysis": {"duration": "2s"}}, {"pause": {}}]
    seen_phases: set[str] = set()
    seen_weights: set[float] = set()
    scrapes: list[Scrape] = []

    def note(m: Scrape) -> None:
        scrapes.append(m)
        seen_phases.update(dict(k)["phase"] for k, v in m.select("shipyard_rollout_phase", service="shop").items()
                           if v == 1)
        seen_weights.add(m.get("shipyard_canary_weight_percent", service="shop"))

    async with Traffic(f"http://{listen}", clients=4, pause=0.005, users=500):
        r = await deploy(api, canary_spec(make_spec, "v2", "c2", steps))
        deadline = time.monotonic() + 60
        while True:
            note(await scrape(daemon))
            roll = (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]
            if roll["phase"] == "paused" and roll["hold"] == "promote" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert roll["phase"] == "paused", roll
        held = await scrape(daemon)
        note(held)
        canary, stable = roll["target_slot"], roll["previous_slot"]
        status = await api.get("/v1/services/shop")
        canary_release = status["slots"][canary]["image"][:12]
        stable_release = status["slots"][stable]["image"][:12]
        assert held.get("shipyard_canary_weight_percent", service="shop") == 30
        assert held.get("shipyard_canary_step", service="shop") == roll["step_index"]
        assert held.get("shipyard_rollout_active", service="shop") == 1
        assert held.get("shipyard_track_weight_percent", service="shop", track=canary, release=canary_release) == 30
        assert held.get("shipyard_track_weight_percent", service="shop", track=stable, release=stable_release) == 70
        both = [sum(held.select("shipyard_requests_total", service="shop", track=t).values()) for t in (canary, stable)]
        assert all(n > 0 for n in both), both
        running = held.select("shipyard_analysis_verdict", service="shop")
        assert running and sum(running.values()) == len(running) / 3        # one status per metric is 1
        info = held.select("shipyard_rollout_info", service="shop")
        assert [dict(k)["rollout"] for k in info] == [r["id"]]

        await api.post("/v1/services/shop/promote", {})
        final = await api.wait_rollout(r["id"], 60)
        assert final["phase"] == "succeeded", final
    done = await scrape(daemon)
    note(done)

    assert {"analyzing", "paused", "succeeded"} <= seen_phases, seen_phases     # the 2 s analysis step is seen
    assert {30.0, 0.0} <= seen_weights, seen_weights
    assert done.get("shipyard_rollout_active", service="shop") == 0
    assert done.get("shipyard_rollouts_total", service="shop", kind="deploy", strategy="canary",
                    outcome="succeeded") == 2
    verdicts = (await api.get(f"/v1/rollouts/{r['id']}"))["analysis"]["verdicts"]
    assert verdicts
    counted = done.select("shipyard_analysis_verdicts_total", service="shop")
    expected: dict[tuple[str, str, str], int] = {}
    for doc in (first, r):
        analysis = (await api.get(f"/v1/rollouts/{doc['id']}"))["analysis"] or {}
        for v in analysis.get("verdicts", []):
            key = (v["metric"], v["kind"], v["status"])
            expected[key] = expected.get(key, 0) + 1
    assert {(d["metric"], d["kind"], d["status"]): n for d, n in ((dict(k), n) for k, n in counted.items())} \
        == expected
    assert not done.select("shipyard_analysis_verdict", service="shop")      # nothing running any more
    for before, after in zip(scrapes, scrapes[1:], strict=False):
        assert_monotonic(before, after)
    assert_histograms_consistent(done)


PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "time", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "max", "min", "avg", "count", "topk", "bool", "offset",
    "label_values", "le", "inf", "nan",
}


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Identifiers in every panel's PromQL (and the template queries) that are not functions,
    keywords, label names or template variables: the series names the dashboard asks for."""
    exprs: list[str] = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    names: set[str] = set()
    for expr in exprs:
        text = re.sub(r'"[^"]*"', '""', expr)                     # label values
        text = re.sub(r"\{[^}]*\}", "", text)                     # label matchers
        text = re.sub(r"\[[^\]]*\]", "", text)                    # ranges
        text = re.sub(r"\$\w+", "", text)                         # template variables
        text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
        text = re.sub(r"label_values\(\s*(\w+)\s*,\s*\w+\s*\)", r"\1", text)
        names |= {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text) if w.lower() not in PROMQL_WORDS}
    return names


async def test_grafana_dashboard_asks_only_for_exposed_series(daemon: DaemonProcess) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    uses = dashboard_metric_names(dashboard)
    exposed = (await scrape(daemon)).exposed_names()    # families without samples are listed too
    assert {"shipyard_requests_total", "shipyard_request_duration_seconds_bucket", "shipyard_rollout_phase",
            "shipyard_canary_weight_percent", "shipyard_analysis_verdicts_total", "shipyard_drift_findings",
            "shipyard_instance_healthy"} <= uses
    assert uses <= exposed, f"the dashboard asks for series /metrics does not have: {sorted(uses - exposed)}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]
            assert all("histogram_quantile" not in t["expr"] or "_bucket" in t["expr"] and "le" in t["expr"]
                       for t in panel["targets"]), panel["title"]


def test_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel's query (template variables replaced by what Grafana puts there)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    dashboard = json.loads(DASHBOARD.read_text())
    rules = []
    for panel in dashboard["panels"]:
        for i, target in enumerate(panel.get("targets", [])):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
            rules.append({"record": f"panel:p{panel['id']}_{i}", "expr": expr.replace("$service", ".*")})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout
