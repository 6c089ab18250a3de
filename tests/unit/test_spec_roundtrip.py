"""Spec as a value: dump/load round trips, JSON transport, immutability, and the JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from shipyard.spec import (
    BuildSpec,
    HealthSpec,
    RunSpec,
    Spec,
    SpecInvalid,
    json_schema,
    parse_duration,
    parse_spec,
)

EXAMPLE = Path("/work/shared/shipyard.example.yaml").read_text()
CANARY = """\
service: shop
listen: "[::1]:8080"
build:
  env: {N: 1}
  files: {a/b.txt: hi}
run:
  command: [python, app.py]
  stop_timeout: 1.5s
health: {interval: 250ms, timeout: 1m30s}
strategy:
  canary:
    sticky: {cookie: uid}
    steps:
      - set_weight: 1
      - pause: 30s
      - pause: {}
      - analysis: {duration: 1h}
    analysis:
      interval: 100ms
      metrics:
        - {name: p99, latency: {quantile: 0.99, max: 500ms}}
        - {name: prom, prometheus: {query: up, min: 1}}
database: {url: "postgresql://127.0.0.1/shop", alembic: alembic.ini, lock_timeout: 1500ms}
router: {kind: embedded, max_conns_per_instance: 8, queue_size: 0, queue_timeout: 250ms, per_try_timeout: 2s}
"""


@pytest.mark.parametrize("text", [EXAMPLE, CANARY, "service: a\nlisten: h:1\nrun: {command: [x]}\n"])
def test_yaml_round_trip(tmp_path: Path, text: str) -> None:
    spec = parse_spec(text, "shop.yaml", tmp_path)
    dumped = spec.model_dump(mode="json")
    again = parse_spec(yaml.safe_dump(dumped), "shop.yaml", tmp_path)
    assert again == spec
    assert again.model_dump(mode="json") == dumped


def test_durations_dump_as_canonical_strings(tmp_path: Path) -> None:
    data = parse_spec(CANARY, "shop.yaml", tmp_path).to_json_dict()
    assert data["run"]["stop_timeout"] == "1.5s"
    assert (data["health"]["interval"], data["health"]["timeout"]) == ("250ms", "1m30s")
    assert data["strategy"]["canary"]["steps"][1:4] == [
        {"pause": {"duration": "30s"}}, {"pause": {"duration": None}}, {"analysis": {"duration": "1h"}}]
    assert data["database"]["lock_timeout"] == "1.5s"
    assert data["build"]["env"] == {"N": "1"}
    assert "base_dir" not in data and "source" not in data


def test_json_transport_keeps_value_and_location(tmp_path: Path) -> None:
    spec = parse_spec(CANARY, "shop.yaml", tmp_path)
    wire = json.loads(json.dumps(spec.to_json_dict()))
    back = Spec.from_json_dict(wire, tmp_path, source="shop.yaml")
    assert back == spec
    assert back.base_dir == tmp_path.resolve() and back.source == "shop.yaml"
    assert Spec.from_json_dict(wire, tmp_path / "other") != spec  # where it lives is part of the value


def test_stored_form_keeps_the_directory_relative_paths_resolve_against(tmp_path: Path) -> None:
    spec = parse_spec(CANARY, "shop.yaml", tmp_path)
    stored = json.loads(json.dumps(spec.to_stored_dict()))
    back = Spec.from_json_dict(stored, "/", source="shop.yaml")   # the daemon's fallback for documents without one
    assert back == spec and back.base_dir == tmp_path.resolve()
    assert back.resolve_path("./m2") == tmp_path.resolve() / "m2"
    assert back.to_json_dict() == spec.to_json_dict()
    assert parse_spec(yaml.safe_dump(back.to_json_dict()), "shop.yaml", tmp_path) == spec


def test_from_json_dict_reports_paths_without_lines(tmp_path: Path) -> None:
    with pytest.raises(SpecInvalid) as info:
        Spec.from_json_dict({"service": "a", "listen": "h:1", "run": {"command": []}, "replicas": 0}, tmp_path)
    assert info.value.problems == ["<json>: run.command: must not be empty", "<json>: replicas: must be at least 1, got 0"]


def test_python_construction_takes_seconds() -> None:
    spec = Spec(service="a", listen="127.0.0.1:9", run=RunSpec(command=["x"], stop_timeout=0.5),
                health=HealthSpec(interval=0.05), build=BuildSpec(env={"A": 1}))  # type: ignore[dict-item]
    assert (spec.run.stop_timeout, spec.health.interval, spec.build.env) == (0.5, 0.05, {"A": "1"})
    assert spec.to_json_dict()["health"]["interval"] == "50ms"
    with pytest.raises(pydantic.ValidationError):
        HealthSpec(interval=-1)


def test_specs_are_frozen(tmp_path: Path) -> None:
    spec = parse_spec(CANARY, "shop.yaml", tmp_path)
    with pytest.raises(pydantic.ValidationError):
        spec.replicas = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        spec.run.stop_timeout = 1  # type: ignore[misc]
    assert spec.model_copy(update={"replicas": 3}).replicas == 3


# -- JSON Schema ----------------------------------------------------------------------------------

def _check(schema: dict[str, Any], value: Any, defs: dict[str, Any], path: str = "") -> list[str]:
    """A small validator for the JSON Schema keywords our schema uses (no extra dependency)."""
    if "$ref" in schema:
        return _check(defs[schema["$ref"].rsplit("/", 1)[1]], value, defs, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = [s for s in schema[key] if not _check(s, value, defs, path)]
            return [] if matches else [f"{path}: no alternative matches {value!r}"]
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = kind is None or isinstance(value, types[kind])
    if not ok:
        return [f"{path}: {value!r} is not {kind}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != const")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match pattern")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                errors += _check(props[k], v, defs, f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{k}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _check(schema["additionalProperties"], v, defs, f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _check(schema["items"], item, defs, f"{path}[{i}]")
    return errors


def test_json_schema_is_json_with_every_top_level_key() -> None:
    schema = json.loads(json.dumps(json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(schema["properties"]) == ["service", "listen", "build", "run", "health", "replicas",
                                          "strategy", "database", "drift", "router", "tls", "domains",
                                          "notifications", "fleet"]
    assert sorted(schema["required"]) == ["listen", "run", "service"]
    refs = re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(schema))
    assert refs and all(ref in schema["$defs"] for ref in refs)
    for name in ("BlueGreenSpec", "CanarySpec", "AnalysisSpec", "MetricSpec", "DatabaseSpec", "RouterSpec",
                 "SetWeightStep", "PauseStep", "AnalysisStep", "PreviewCheck", "TlsSpec"):
        assert schema["$defs"][name]["additionalProperties"] is False, name


def test_json_schema_shows_durations_as_strings_with_a_pattern() -> None:
    schema = json_schema()
    timeout = schema["$defs"]["RunSpec"]["properties"]["stop_timeout"]
    assert timeout["type"] == "string"
    for good in ["500ms", "30s", "10m", "1h30m", "1.5s", "1m500ms"]:
        assert re.search(timeout["pattern"], good), good
        parse_duration(good)
    for bad in ["10", "10 minutes", "1m1h", "1d"]:
        assert not re.search(timeout["pattern"], bad), bad


@pytest.mark.parametrize("text", [EXAMPLE, CANARY])
def test_files_that_load_also_satisfy_the_schema(text: str) -> None:
    schema = json_schema()
    assert _check(schema, yaml.safe_load(text), schema["$defs"]) == []


def test_schema_rejects_what_loading_rejects() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    data = yaml.safe_load(EXAMPLE)
    assert _check(schema, data, defs) == []
    data["bulid"] = {}
    data["run"]["stop_timeout"] = 10
    data["strategy"]["blue_green"]["scale_down_delay"] = "10 minutes"
    assert _check(schema, data, defs) == [
        ".run.stop_timeout: 10 is not string",
        f".strategy.blue_green: no alternative matches {data['strategy']['blue_green']!r}",
        ".bulid: not allowed",
    ]
