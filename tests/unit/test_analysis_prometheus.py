"""The Prometheus provider against a fake server on loopback: every answer that is not one
clear number is inconclusive with its reason, and a number is judged against min / max."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shipyard.analysis import Second, Verdict, Window, evaluate, overall
from shipyard.analysis.providers.prometheus import (
    URL_ENV,
    QueryContext,
    TemplateError,
    judge,
    promql_duration,
    redact,
    render_query,
    resolve_url,
    single_value,
)
from shipyard.spec.strategy import AnalysisSpec, PrometheusMetric

CONTEXT = QueryContext(service="shop", canary_slot="green", stable_slot="blue", canary_image="c0ffee0123ab" + "9" * 52,
                       stable_image="beef00112233" + "8" * 52, interval=5.0)


@dataclass
class FakePrometheus:
    """Answers /api/v1/query with the next canned (status, body) and records the queries."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    delay: float = 0.0
    queries: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = head.split(" ", 2)[1]
        self.queries.append(parse_qs(urlsplit(target).query).get("query", [""])[0])
        self.auth.extend(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                         if line.lower().startswith("authorization:"))
        status, body = self.answers.pop(0)
        await asyncio.sleep(self.delay)
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()


@pytest.fixture
async def prom() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


def vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": m, "value": [1700000000.0, v]} for m, v in samples]}}


def metric(query: str = 'sum(x{service="{{service}}"})', **bounds: float) -> PrometheusMetric:
    return PrometheusMetric(query=query, **(bounds or {"max": 0.1}))


async def run(prom: FakePrometheus, answer: Any, status: int = 200, m: PrometheusMetric | None = None,
              timeout: float = 5.0):
    prom.answers.append((status, answer))
    return await judge("errors", m or metric(), CONTEXT, {URL_ENV: prom.url}, timeout=timeout)


# -- results that are one number ----------------------------------------------------------------

async def test_a_single_sample_above_max_fails_with_the_query_as_run(prom: FakePrometheus) -> None:
    v = await run(prom, vector(({}, "0.48")))
    assert v.status == "failed" and v.kind == "prometheus" and v.metric == "errors"
    assert v.value == 0.48 and v.threshold == 0.1
    assert prom.queries == ['sum(x{service="shop"})']
    assert v.evidence["query"] == 'sum(x{service="shop"})' and v.evidence["prometheus"] == prom.url
    assert "0.48 > max 0.1" in v.detail and 'sum(x{service="shop"})' in v.detail


async def test_a_single_sample_within_bounds_is_successful(prom: FakePrometheus) -> None:
    v = await run(prom, vector(({"track": "canary"}, "0.02")), m=metric(min=0.0, max=0.1))
    assert v.status == "successful" and v.value == 0.02
    assert v.evidence["labels"] == {"track": "canary"}
    assert "within min 0 and max 0.1" in v.detail


async def test_below_min_fails(prom: FakePrometheus) -> None:
    v = await run(prom, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.9"]}},
                  m=metric(min=0.99))
    assert v.status == "failed" and v.value == 0.9 and v.threshold == 0.99 and "< min 0.99" in v.detail


async def test_a_value_equal_to_the_bound_passes(prom: FakePrometheus) -> None:
    assert (await run(prom, vector(({}, "0.1")))).status == "successful"


# -- results that are not: inconclusive, with the reason ------------------------------------------

@pytest.mark.parametrize(("answer", "reason"), [
    (vector(), "empty result"),
    (vector(({}, "NaN")), "NaN"),
    (vector(({}, "+Inf")), "+Inf"),
    (vector(({"track": "canary"}, "0.5"), ({"track": "stable"}, "0.0")), "2 series where one was expected"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "range vector"),
    ({"status": "success", "data": {"resultType": "string", "result": [1.0, "x"]}}, "a string result"),
])
async def test_not_one_number_is_inconclusive(prom: FakePrometheus, answer: Any, reason: str) -> None:
    v = await run(prom, answer)
    assert v.status == "inconclusive" and v.value is None, v
    assert reason in v.detail, v.detail
    assert v.evidence["query"] == 'sum(x{service="shop"})'


async def test_several_series_are_listed_in_the_evidence(prom: FakePrometheus) -> None:
    v = await run(prom, vector(({"track": "canary"}, "0.5"), ({"track": "stable"}, "0.0")))
    assert v.evidence["series"] == [{"track": "canary"}, {"track": "stable"}] and v.evidence["series_count"] == 2


async def test_a_query_error_is_inconclusive_with_prometheus_message(prom: FakePrometheus) -> None:
    v = await run(prom, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}, status=400)
    assert v.status == "inconclusive"
    assert "bad_data: parse error at char 5" in v.detail and "HTTP 400" in v.detail
    assert v.evidence["error_type"] == "bad_data"


async def test_a_non_json_answer_is_inconclusive(prom: FakePrometheus) -> None:
    v = await run(prom, "<html>proxy error</html>", status=502)
    assert v.status == "inconclusive" and "HTTP 502" in v.detail and "proxy error" in v.detail


async def test_a_slow_server_is_inconclusive_after_the_timeout(prom: FakePrometheus) -> None:
    prom.delay = 2.0
    t0 = asyncio.get_running_loop().time()
    v = await run(prom, vector(({}, "0.0")), timeout=0.3)
    assert asyncio.get_running_loop().time() - t0 < 1.5
    assert v.status == "inconclusive" and "no answer within 0.3s" in v.detail and v.evidence["error"] == "timeout"


async def test_a_refused_connection_is_inconclusive() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    v = await judge("errors", metric(), CONTEXT, {URL_ENV: f"http://127.0.0.1:{port}"})
    assert v.status == "inconclusive" and "query failed" in v.detail and v.evidence["error"] == "transport"


async def test_no_prometheus_configured_is_inconclusive() -> None:
    v = await judge("errors", metric(), CONTEXT, {})
    assert v.status == "inconclusive" and "no Prometheus configured" in v.detail and URL_ENV in v.detail


async def test_an_unknown_placeholder_is_inconclusive_and_nothing_is_queried(prom: FakePrometheus) -> None:
    v = await judge("errors", metric("sum(x{ns=\"{{namespace}}\"})"), CONTEXT, {URL_ENV: prom.url})
    assert v.status == "inconclusive" and "unknown placeholder {{namespace}}" in v.detail
    assert prom.queries == []


# -- addresses and templates ----------------------------------------------------------------------

async def test_the_metric_address_wins_and_credentials_stay_out_of_the_evidence(prom: FakePrometheus) -> None:
    port = prom.url.rsplit(":", 1)[1]
    m = PrometheusMetric(query="vector(1)", max=2, address=f"http://ops:s3cret@127.0.0.1:{port}")
    prom.answers.append((200, vector(({}, "1"))))
    v = await judge("x", m, CONTEXT, {URL_ENV: "http://127.0.0.1:1"})
    assert v.status == "successful"
    assert prom.auth and prom.auth[0].startswith("Basic ")        # the credentials were used...
    assert "s3cret" not in json.dumps(v.to_dict()) and v.evidence["prometheus"] == f"http://127.0.0.1:{port}"


def test_resolve_url_order() -> None:
    assert resolve_url(PrometheusMetric(query="q", max=1, address="http://a:9090"), {URL_ENV: "http://b"}) == \
        "http://a:9090"
    assert resolve_url(PrometheusMetric(query="q", max=1), {URL_ENV: "http://b"}) == "http://b"
    assert resolve_url(PrometheusMetric(query="q", max=1), {URL_ENV: ""}) is None


def test_redact() -> None:
    assert redact("https://u:p@prom.example:9090/x?y=1") == "https://prom.example:9090/x?y=1"
    assert redact("http://[::1]:9090") == "http://[::1]:9090"
    assert redact("http://u@[::1]:9090/") == "http://[::1]:9090/"


def test_templates() -> None:
    q = ('rate(r{service="{{service}}",track="{{ track }}",release="{{release}}"}[{{interval}}])'
         ' / rate(r{track="{{stable_track}}",release="{{stable_release}}"}[{{interval}}])')
    assert render_query(q, CONTEXT) == ('rate(r{service="shop",track="green",release="c0ffee0123ab"}[5s])'
                                        ' / rate(r{track="blue",release="beef00112233"}[5s])')
    unbuilt = QueryContext("shop", "green", "blue", None, "beef00", 1.0)
    with pytest.raises(TemplateError, match="no value yet"):
        render_query("{{release}}", unbuilt)
    assert promql_duration(1.5) == "1500ms" and promql_duration(60) == "60s"


def test_single_value_shapes() -> None:
    assert single_value({"resultType": "scalar", "result": [0, "3.5"]}) == (3.5, {})
    assert single_value({"resultType": "vector", "result": [{"metric": {"a": "b"}, "value": [0, "-1"]}]}) == \
        (-1.0, {"a": "b"})


# -- the provider's verdicts in the analysis tick -------------------------------------------------

def test_evaluate_takes_provided_verdicts_in_spec_order_and_a_failed_one_fails_the_tick() -> None:
    spec = AnalysisSpec.model_validate({"min_requests": 5, "metrics": [
        {"name": "ok", "success_rate": {"min": 0.5}},
        {"name": "prom", "prometheus": {"query": "q", "max": 1}}]})
    seconds = [(Second(t, 10, 0, {}), Second(t, 10, 0, {})) for t in range(100, 110)]
    window = Window.of(c for c, _ in seconds)
    failed = Verdict("prom", "prometheus", "failed", 2.0, 1.0, 0, "prometheus 2 > max 1: q at http://p")
    verdicts, _ = evaluate(spec, window, window, None, seconds, provided={"prom": failed})
    assert [v.metric for v in verdicts] == ["ok", "prom"] and verdicts[1] is failed
    assert overall(verdicts) == "failed"
    unjudged, _ = evaluate(spec, window, window, None, seconds)
    assert unjudged[1].status == "inconclusive" and overall(unjudged) == "inconclusive"
