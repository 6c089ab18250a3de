"""Hostile or careless spec files are refused fast, with file:line and the limit named,
never with a Python traceback (issue 11, "Spec and CLI input")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipyard.errors import SpecError
from shipyard.spec import (
    MAX_SPEC_BYTES,
    SERVICE_NAME_PATTERN,
    SpecTooLarge,
    is_service_name,
    load_spec,
    looks_secret,
    parse_spec,
    spec_warnings,
)
from shipyard.spec.bounded import MAX_ALIASES, MAX_DEPTH, MAX_NODES

BASE = """\
service: shop
listen: 127.0.0.1:8080
run:
  command: [python, app.py]
"""
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def bomb(levels: int = 9, width: int = 9) -> str:
    """The classic billion laughs: each anchor is `width` aliases of the one before."""
    lines = ["bomb:", "  a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return BASE + "\n".join(lines) + "\n"


def refused(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "shop.yaml", Path("/tmp"))
    return info.value


def test_alias_bomb_is_refused_in_well_under_a_second_naming_the_limit() -> None:
    start = time.monotonic()
    e = refused(bomb())
    assert time.monotonic() - start < 0.5
    assert isinstance(e, SpecTooLarge)
    assert e.message.startswith("shop.yaml:") and f"the limit is {MAX_NODES}" in e.message


def test_too_many_aliases_are_refused_while_composing() -> None:
    text = BASE + "x: &x 1\nys: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    e = refused(text)
    assert isinstance(e, SpecTooLarge) and f"more than {MAX_ALIASES} aliases" in e.message


def test_a_self_referencing_alias_is_refused_not_a_recursion_error() -> None:
    e = refused(BASE + "loop: &l [*l]\n")
    assert e.message == "shop.yaml:5 an alias refers to a node that contains it (a cycle)"


def test_aliases_used_sparingly_still_work() -> None:
    text = BASE.replace("  command: [python, app.py]\n", "  command: &cmd [python, app.py]\n")
    text += "health: {path: /healthz}\n"
    assert parse_spec(text, "shop.yaml", Path("/tmp")).run.command == ["python", "app.py"]


def test_5000_deep_nesting_names_line_and_limit() -> None:
    e = refused(BASE + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    assert isinstance(e, SpecTooLarge)
    assert e.message == f"shop.yaml:5 nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}"


def test_deep_nesting_through_aliases_is_refused_too() -> None:
    half = "[" * 40 + "]" * 40
    e = refused(BASE + f"a: &a {half}\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n")
    assert "levels deep once aliases are expanded" in e.message


def test_a_control_character_gives_file_line_column() -> None:
    e = refused(BASE + "# a comment\x01\n")
    assert e.message == "shop.yaml:5:12 not valid YAML: control character U+0001 is not allowed in a spec"
    assert e.hint is not None and "remove it" in e.hint


def test_oversized_text_is_refused_before_parsing() -> None:
    text = BASE + "#" + "x" * (MAX_SPEC_BYTES + 10) + "\n"
    start = time.monotonic()
    e = refused(text)
    assert time.monotonic() - start < 0.5
    assert "the limit is 1048576 bytes (1 MiB)" in e.message


def test_a_50_mb_file_is_refused_by_size_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.write(BASE.encode())
        f.truncate(50 * 1024 * 1024)
    start = time.monotonic()
    with pytest.raises(SpecTooLarge) as info:
        load_spec(path)
    assert time.monotonic() - start < 0.5
    assert info.value.message == f"big.yaml: the spec is {50 * 1024 * 1024} bytes; the limit is 1048576 bytes (1 MiB)"


@pytest.mark.parametrize("name", ["my shop", "shöp", "a/b", "shop[0]", "shop\r\nX-Injected: 1", "shop\n",
                                  "[/bold]", "-shop", "x" * 41])
def test_unsafe_service_names_are_refused_with_file_line(name: str) -> None:
    import json
    e = refused(BASE.replace("service: shop", f"service: {json.dumps(name)}"))
    assert e.message.startswith("shop.yaml:1 service: "), e.message
    assert not is_service_name(name)


def test_the_names_examples_and_tests_use_are_accepted() -> None:
    for name in ["shop", "a", "v2-manual", "shop-db-2", "0", "x" * 40]:
        assert is_service_name(name), name
        assert parse_spec(BASE.replace("service: shop", f"service: '{name}'"), "s.yaml", Path("/tmp")).service == name
    for example in sorted(EXAMPLES.glob("*/*.yaml")):
        assert is_service_name(load_spec(example).service), example
    assert SERVICE_NAME_PATTERN == r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?"


@pytest.mark.parametrize(("name", "secret"), [
    ("DB_PASSWORD", True), ("PGPASSWORD", True), ("api_key", True), ("GITHUB_TOKEN", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("CLIENT_SECRET", True), ("MYSQL_PWD", True), ("DB_PASS", True),
    ("GOOGLE_APPLICATION_CREDENTIALS", True), ("APIKEY", True), ("REDIS_PASSWD", True),
    ("KEYBOARD_LAYOUT", False), ("TOKENIZER_PATH", False), ("MONKEY_MODE", False), ("LOG_LEVEL", False),
    ("PASSTHROUGH", False), ("PORT", False),
])
def test_which_names_look_like_secrets(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


def test_secret_looking_run_env_is_accepted_but_warned_pointing_to_secret_env() -> None:
    spec = parse_spec(BASE + "  env: {DB_PASSWORD: hunter2, LOG_LEVEL: info}\n", "shop.yaml", Path("/tmp"))
    [warning] = spec_warnings(spec)
    assert warning.startswith("shop.yaml: run.env.DB_PASSWORD looks like a secret")
    assert "run.secret_env: [DB_PASSWORD]" in warning and "hunter2" not in warning
    assert spec_warnings(parse_spec(BASE, "shop.yaml", Path("/tmp"))) == []


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", "validate", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("content", "expected"), [
    (BASE + "# \x07bell\n", "s.yaml:5:3 not valid YAML: control character U+0007"),
    (BASE + "deep: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "s.yaml:5 nested more than 64 levels deep"),
    (bomb(), "expands to more than 20000 nodes"),
])
def test_validate_refuses_hostile_files_without_a_traceback(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(content)
    start = time.monotonic()
    res = _validate(path)
    assert time.monotonic() - start < 10       # the interpreter's start is most of it
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert expected in " ".join(res.stderr.split()), res.stderr


def test_validate_prints_the_secret_warning(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "  env: {API_TOKEN: abc}\n")
    res = _validate(path)
    assert res.returncode == 0, res.stderr
    assert "warning: s.yaml: run.env.API_TOKEN looks like a secret" in " ".join(res.stderr.split())
