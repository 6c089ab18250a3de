"""The Prometheus metric provider: run a spec's PromQL query and judge its one number.

A canary is only as safe as its analysis, so everything that is not one clear number
(an empty result, several series, NaN, an error, a timeout, no server configured) is
*inconclusive* with the reason spelled out, never a pass. The verdict's evidence holds
the query exactly as it ran and the server it ran on (credentials removed), so an
abort can be checked by rerunning the query by hand."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from shipyard.spec.strategy import PrometheusMetric

from ..context import RELEASE_LABEL_LENGTH, QueryContext, promql_duration
from ..verdict import Verdict
from ..verdict import num as _num

__all__ = ["RELEASE_LABEL_LENGTH", "QueryContext", "promql_duration"]

URL_ENV = "SHIPYARD_PROMETHEUS_URL"
"""The daemon's environment variable naming the Prometheus server for metrics without `address`."""
DEFAULT_TIMEOUT = 5.0

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    pass


def render_query(template: str, context: QueryContext) -> str:
    """Fill the placeholders; an unknown name or a value not known yet is an error, not an empty string."""
    values = context.variables()

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise TemplateError(f"unknown placeholder {{{{{name}}}}} (known: {', '.join(sorted(values))})")
        value = values[name]
        if value is None:
            raise TemplateError(f"{{{{{name}}}}} has no value yet (the release is not built)")
        return value

    return _PLACEHOLDER.sub(fill, template)


def resolve_url(metric: PrometheusMetric, env: Mapping[str, str]) -> str | None:
    """The metric's own `address`, else the daemon's SHIPYARD_PROMETHEUS_URL, else None."""
    return metric.address or env.get(URL_ENV) or None


def redact(url: str) -> str:
    """The URL without user:password, for evidence and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def judge(name: str, metric: PrometheusMetric, context: QueryContext, env: Mapping[str, str], *,
                client: httpx.AsyncClient | None = None, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Run the metric's query now and judge the result against its bounds."""
    url = resolve_url(metric, env)
    evidence: dict[str, Any] = {"query_template": metric.query, "min": metric.min, "max": metric.max}
    if url is None:
        return _inconclusive(name, f"no Prometheus configured: give the metric an `address` or start the daemon "
                                   f"with {URL_ENV}", evidence)
    evidence["prometheus"] = redact(url)
    try:
        query = render_query(metric.query, context)
    except TemplateError as e:
        return _inconclusive(name, f"query template: {e}", evidence)
    evidence["query"] = query
    try:
        body = await _instant_query(url, query, client, timeout)
    except QueryFailed as e:
        return _inconclusive(name, f"query failed at {redact(url)}: {e}", {**evidence, **e.evidence})
    if body.get("warnings"):
        evidence["warnings"] = list(body["warnings"])
    try:
        value, labels = single_value(body.get("data"))
    except NoValue as e:
        return _inconclusive(name, f"{e}: {query}", {**evidence, **e.evidence})
    evidence["value"] = value
    if labels:
        evidence["labels"] = labels
    return _compare(name, query, value, metric, evidence)


class QueryFailed(Exception):
    def __init__(self, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.evidence = evidence


class NoValue(Exception):
    def __init__(self, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.evidence = evidence


async def _instant_query(url: str, query: str, client: httpx.AsyncClient | None, timeout: float) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/api/v1/query"
    own = client is None
    c = client or httpx.AsyncClient()
    try:
        resp = await c.get(endpoint, params={"query": query}, timeout=timeout)
    except httpx.TimeoutException as e:
        raise QueryFailed(f"no answer within {timeout:g}s ({type(e).__name__})", error="timeout") from e
    except httpx.HTTPError as e:
        raise QueryFailed(f"{type(e).__name__}: {e or 'request failed'}", error="transport") from e
    finally:
        if own:
            await c.aclose()
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise QueryFailed(f"HTTP {resp.status_code}, not a Prometheus API answer: {resp.text[:200]!r}",
                          http_status=resp.status_code)
    if body.get("status") != "success":
        kind = body.get("errorType") or "error"
        raise QueryFailed(f"{kind}: {body.get('error') or 'no error message'} (HTTP {resp.status_code})",
                          http_status=resp.status_code, error_type=kind, error=body.get("error"))
    if resp.status_code != 200:
        raise QueryFailed(f"HTTP {resp.status_code}", http_status=resp.status_code)
    return body


def single_value(data: Any) -> tuple[float, dict[str, str]]:
    """The number a `data` section of /api/v1/query holds: a scalar, or a vector of exactly
    one sample (returned with its labels). Anything else raises NoValue with the reason."""
    if not isinstance(data, dict):
        raise NoValue("the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _number(result), {}
    if kind == "vector":
        if not isinstance(result, list):
            raise NoValue("malformed vector result")
        if not result:
            raise NoValue("empty result (no series matched, or no samples in the window)")
        if len(result) > 1:
            series = [dict(s.get("metric") or {}) for s in result[:5] if isinstance(s, dict)]
            raise NoValue(f"{len(result)} series where one was expected (aggregate them, e.g. with sum())",
                          series=series, series_count=len(result))
        sample = result[0]
        if not isinstance(sample, dict):
            raise NoValue("malformed vector sample")
        return _number(sample.get("value")), dict(sample.get("metric") or {})
    if kind == "matrix":
        raise NoValue("a range vector where one number was expected (wrap it, e.g. in rate() or avg_over_time())")
    raise NoValue(f"a {kind} result where one number was expected")


def _number(pair: Any) -> float:
    if not (isinstance(pair, list | tuple) and len(pair) == 2):
        raise NoValue("malformed sample")
    try:
        value = float(pair[1])
    except (TypeError, ValueError):
        raise NoValue(f"the sample {pair[1]!r} is not a number") from None
    if math.isnan(value):
        raise NoValue("the result is NaN (a 0/0: no traffic in the window?)", value="NaN")
    if math.isinf(value):
        raise NoValue(f"the result is {'+' if value > 0 else '-'}Inf (a division by zero?)", value=str(value))
    return value


def _compare(name: str, query: str, value: float, metric: PrometheusMetric, evidence: dict[str, Any]) -> Verdict:
    if metric.max is not None and value > metric.max:
        status, threshold, why = "failed", metric.max, f"{num(value)} > max {num(metric.max)}"
    elif metric.min is not None and value < metric.min:
        status, threshold, why = "failed", metric.min, f"{num(value)} < min {num(metric.min)}"
    else:
        status = "successful"
        threshold = metric.max if metric.max is not None else metric.min
        bounds = [f"min {num(metric.min)}" if metric.min is not None else "",
                  f"max {num(metric.max)}" if metric.max is not None else ""]
        why = f"{num(value)} within {' and '.join(b for b in bounds if b)}"
    return Verdict(metric=name, kind="prometheus", status=status, value=value, threshold=threshold, samples=0,
                   detail=f"prometheus {why}: {query} at {evidence['prometheus']}", evidence=evidence)


def num(x: float) -> str:
    return "0" if x == 0 else _num(x)


def _inconclusive(name: str, detail: str, evidence: dict[str, Any]) -> Verdict:
    return Verdict(metric=name, kind="prometheus", status="inconclusive", value=None, threshold=None, samples=0,
                   detail=detail, evidence=evidence)
