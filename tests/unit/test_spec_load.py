"""Loading spec files: the example contract, file-level failures, YAML syntax errors, build.context."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shipyard.errors import SpecError
from shipyard.spec import BlueGreenSpec, Spec, SpecInvalid, load_spec, parse_spec

EXAMPLE = Path("/work/shared/shipyard.example.yaml")
MINIMAL = "service: shop\nlisten: 127.0.0.1:8080\nrun:\n  command: [python, app.py]\n"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The shared example, copied next to the app/ directory its build.context names."""
    (tmp_path / "app").mkdir()
    target = tmp_path / "shop.yaml"
    shutil.copyfile(EXAMPLE, target)
    return target


def test_example_file_loads_with_every_value(example: Path) -> None:
    spec = load_spec(example)
    assert spec.service == "shop"
    assert (spec.listen_host, spec.listen_port) == ("127.0.0.1", 8080)
    assert spec.source == "shop.yaml"
    assert spec.base_dir == example.parent.resolve()
    assert spec.context_dir == (example.parent / "app").resolve()
    assert spec.build.ignore == [".git", "__pycache__", "*.pyc"]
    assert spec.build.steps == [["python", "-m", "pip", "install", "--no-deps", "--target", "deps",
                                 "-r", "requirements.txt"]]
    assert spec.build.env == {"PYTHONPATH": "deps"}
    assert spec.build.files == {"config/app.toml": 'greeting = "hello"\n'}
    assert spec.run.command == ["python", "-m", "shop", "--port", "${PORT}"]
    assert spec.run.env == {"LOG_LEVEL": "info"}
    assert spec.run.secret_env == ["DATABASE_PASSWORD"]
    assert spec.run.stop_timeout == 10.0
    assert (spec.health.path, spec.health.interval, spec.health.timeout) == ("/healthz", 1.0, 2.0)
    assert (spec.health.healthy_threshold, spec.health.unhealthy_threshold) == (2, 3)
    assert spec.replicas == 2
    assert spec.strategy.kind == "blue_green" and spec.strategy.canary is None
    bg = spec.strategy.blue_green
    assert bg is not None
    assert [(c.path, c.expect_status, c.method) for c in bg.preview_checks] == [("/", 200, "GET")]
    assert bg.auto_promote is True and bg.scale_down_delay == 600.0
    assert spec.database is not None
    assert spec.database.url == "postgresql://127.0.0.1:5432/shop"
    assert (spec.database.kind, spec.database.migrations, spec.database.lock_timeout) == ("migrations", "./migrations", 1.0)
    assert spec.resolve_path(spec.database.migrations) == (example.parent / "migrations").resolve()
    assert spec.router.kind == "embedded"


def test_defaults_of_a_minimal_spec(tmp_path: Path) -> None:
    spec = parse_spec(MINIMAL, "min.yaml", tmp_path)
    assert spec.build.context == "." and spec.context_dir == tmp_path.resolve()
    assert spec.build.steps == [] and spec.build.env == {} and spec.build.files == {}
    assert spec.run.stop_timeout == 10.0 and spec.run.secret_env == []
    assert spec.health.path == "/healthz" and spec.replicas == 1
    assert spec.strategy.blue_green == BlueGreenSpec() and spec.strategy.kind == "blue_green"
    assert spec.database is None and spec.router.kind == "embedded"


def test_ipv6_listen_address(tmp_path: Path) -> None:
    spec = parse_spec(MINIMAL.replace("127.0.0.1:8080", '"[::1]:9000"'), "s.yaml", tmp_path)
    assert (spec.listen_host, spec.listen_port) == ("::1", 9000)


def test_env_values_keep_the_text_the_user_wrote(tmp_path: Path) -> None:
    text = MINIMAL + "  env: {PORT: 8080, DEBUG: yes, VERSION: 1.10, ON: true}\n"
    spec = parse_spec(text, "s.yaml", tmp_path)
    assert spec.run.env == {"PORT": "8080", "DEBUG": "yes", "VERSION": "1.10", "ON": "true"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.message == f"{tmp_path / 'nope.yaml'}: no such spec file"
    assert info.value.hint


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory, not a spec file"):
        load_spec(tmp_path)


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot be read \(File name too long\)"):
        load_spec(tmp_path / ("x" * 300))


def test_not_utf8(tmp_path: Path) -> None:
    target = tmp_path / "s.yaml"
    target.write_bytes(b"service: \xff\xfe\n")
    with pytest.raises(SpecError, match=r"not UTF-8 text \(bad byte at offset 9\)"):
        load_spec(target)


@pytest.mark.parametrize(("text", "message"), [
    ("service: shop\nlisten: [1, 2\n", "s.yaml:3:1 not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("service: shop\n  listen: x\n", "s.yaml:2:9 not valid YAML: mapping values are not allowed here"),
    ("service: shop\n\tlisten: x\n", "s.yaml:2:1 not valid YAML: found character '\\t' that cannot start any token"),
    ("a: 1\n---\nb: 2\n", "s.yaml:2:1 not valid YAML: but found another document"),
])
def test_yaml_syntax_errors_give_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "s.yaml", tmp_path)
    assert info.value.problems == [message]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "s.yaml", tmp_path)
    assert info.value.problems == ["s.yaml: the file is empty"]
    assert "service, listen and run" in (info.value.hint or "")


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "a list"), ("just text\n", '"just text"'), ("42\n", "42")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "s.yaml", tmp_path)
    assert info.value.problems == [
        f"s.yaml:1 the top level must be a mapping (service: ..., listen: ..., run: ...), got {got}"]


def test_build_context_must_exist(tmp_path: Path) -> None:
    target = tmp_path / "s.yaml"
    target.write_text(MINIMAL + "build:\n  context: ./app\n")
    with pytest.raises(SpecInvalid) as info:
        load_spec(target)
    assert info.value.problems == [f"s.yaml:6 build.context: directory {(tmp_path / 'app').resolve()} does not exist"]
    (tmp_path / "app").write_text("a file")
    with pytest.raises(SpecInvalid) as info:
        load_spec(target)
    assert info.value.problems == [f"s.yaml:6 build.context: {(tmp_path / 'app').resolve()} is not a directory"]
    (tmp_path / "app").unlink()
    (tmp_path / "app").mkdir()
    assert load_spec(target).context_dir == (tmp_path / "app").resolve()


def test_build_context_is_relative_to_the_spec_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj" / "app").mkdir(parents=True)
    (tmp_path / "proj" / "s.yaml").write_text(MINIMAL + "build: {context: app}\n")
    monkeypatch.chdir(tmp_path)
    spec = load_spec("proj/s.yaml")
    assert spec.context_dir == (tmp_path / "proj" / "app").resolve()
    assert isinstance(spec, Spec)


def test_duplicate_keys_are_reported_with_both_lines(tmp_path: Path) -> None:
    text = MINIMAL + "replicas: 2\nreplicas: 3\n"
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "s.yaml", tmp_path)
    assert info.value.problems == ["s.yaml:6 replicas: duplicate key (first given at line 5); remove one of them"]


def test_spec_error_is_a_shipyard_error_with_exit_code(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("service: 1\n", "s.yaml", tmp_path)
    assert info.value.exit_code == 2
    assert str(info.value).splitlines()[0] == 's.yaml: listen: required key missing'
