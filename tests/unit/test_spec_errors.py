"""Validation errors: `file:line key.path: what is wrong`, one line per problem, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.spec import SpecInvalid, parse_spec

BASE = """\
service: shop
listen: 127.0.0.1:8080
run:
  command: [python, app.py]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "shop.yaml", Path("/tmp"))
    for line in info.value.problems:
        assert "Input should" not in line and "pydantic" not in line and "Value error" not in line, line
    return info.value.problems


def one(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


TOP_KEYS = ("service, listen, build, run, health, replicas, strategy, database, drift, router, tls, domains, "
            "notifications, fleet")


def test_unknown_top_level_key_lists_the_keys_and_suggests_one() -> None:
    assert one(BASE + "bulid: {}\n") == (
        f"shop.yaml:5 bulid: unknown key (expected one of: {TOP_KEYS}); did you mean build?")


def test_unknown_nested_key() -> None:
    text = BASE + "strategy:\n  blue_green:\n    auto_promot: false\n"
    assert one(text) == ("shop.yaml:7 strategy.blue_green.auto_promot: unknown key (expected one of: "
                         "preview_checks, auto_promote, scale_down_delay); did you mean auto_promote?")
    assert one(BASE + "router: {kind: embedded, zzz: 1}\n") == (
        "shop.yaml:5 router.zzz: unknown key (expected one of: kind, max_conns_per_instance, queue_size, "
        "queue_timeout, per_try_timeout, workers)")


@pytest.mark.parametrize(("value", "message"), [
    ("Shop_1", '"Shop_1" must match [a-z0-9-]+ (lowercase letters, digits, dashes)'),
    ("-shop", '"-shop" must start and end with a letter or digit'),
    ("a" * 41, f'"{"a" * 41}" is 41 characters long; the limit is 40'),
    ("no", 'expected a string, got no (quote it: "no")'),
    ("12", 'expected a string, got 12 (quote it: "12")'),
])
def test_service_name(value: str, message: str) -> None:
    assert one(BASE.replace("service: shop", f"service: {value}")) == f"shop.yaml:1 service: {message}"


@pytest.mark.parametrize(("value", "message"), [
    ("8080", "expected a string, got 8080 (quote it: \"8080\")"),
    ("localhost", '"localhost" is not host:port like 127.0.0.1:8080'),
    ("127.0.0.1:0", 'port 0 in "127.0.0.1:0" is out of range 1..65535'),
    ("127.0.0.1:65536", 'port 65536 in "127.0.0.1:65536" is out of range 1..65535'),
    ("300.1.1.1:80", '"300.1.1.1" in "300.1.1.1:80" is not an IPv4 address'),
    ("bad_host:80", '"bad_host" in "bad_host:80" is not a hostname or IP address'),
    ("::1:80", '"::1:80" is not host:port like 127.0.0.1:8080 (write IPv6 addresses in brackets: [::1]:8080)'),
    ('"[zz]:80"', '"[zz]" in "[zz]:80" is not an IPv6 address'),
])
def test_listen(value: str, message: str) -> None:
    assert one(BASE.replace("listen: 127.0.0.1:8080", f"listen: {value}")) == f"shop.yaml:2 listen: {message}"


def test_missing_top_level_key_has_no_line() -> None:
    assert one("service: shop\nlisten: 127.0.0.1:8080\n") == "shop.yaml: run: required key missing"


def test_missing_nested_key_uses_the_line_of_its_parent() -> None:
    assert one("service: shop\nlisten: 127.0.0.1:8080\nrun:\n  env: {A: b}\n") == (
        "shop.yaml:3 run.command: required key missing")
    text = BASE + "strategy:\n  canary:\n    steps:\n      - analysis: {}\n"
    assert one(text) == "shop.yaml:8 strategy.canary.steps[0].analysis.duration: required key missing"


@pytest.mark.parametrize(("value", "message"), [
    ('"10 minutes"', '"10 minutes" is not a duration like 10m'),
    ("10", "10 is a bare number; durations need a unit (write 10s, not 10)"),
    ("2.5", "2.5 is a bare number; durations need a unit (write 2.5s, not 2.5)"),
    ('"10"', "10 is a bare number; durations need a unit (write 10s, not 10)"),
    ("true", "true is not a duration like 10m"),
    ("[1s]", "expected a duration like 10m, got a list"),
])
def test_bad_durations(value: str, message: str) -> None:
    text = BASE + f"strategy:\n  blue_green:\n    scale_down_delay: {value}\n"
    with pytest.raises(SpecInvalid) as info:
        parse_spec(text, "shop.yaml", Path("/tmp"))
    assert info.value.problems == [f"shop.yaml:7 strategy.blue_green.scale_down_delay: {message}"]
    assert "500ms, 30s, 10m" in (info.value.hint or "")


def test_positive_durations_reject_zero() -> None:
    assert one(BASE + "  stop_timeout: 0s\n") == "shop.yaml:5 run.stop_timeout: 0s is too short: must be longer than 0s"
    assert one(BASE + "health: {timeout: 0ms}\n") == (
        "shop.yaml:5 health.timeout: 0s is too short: must be longer than 0s")


@pytest.mark.parametrize(("yaml_value", "message"), [
    ("0", "must be at least 1, got 0"),
    ("65", "must be at most 64, got 65"),
    ('"2"', 'expected a whole number, got "2"'),
    ("2.0", "expected a whole number, got 2.0"),
    ("true", "expected a whole number, got true"),
])
def test_replicas(yaml_value: str, message: str) -> None:
    assert one(BASE + f"replicas: {yaml_value}\n") == f"shop.yaml:5 replicas: {message}"


def test_run_section() -> None:
    text = """\
service: shop
listen: 127.0.0.1:8080
run:
  command: [python, -m, http.server, 8000]
  env: {bad-name: x, OK: 1}
  secret_env: [bad-name]
"""
    assert problems(text) == [
        'shop.yaml:4 run.command[3]: expected a string, got 8000 (quote it: "8000")',
        'shop.yaml:5 run.env.bad-name: "bad-name" is not a valid environment variable name (letters, digits, _)',
        'shop.yaml:6 run.secret_env[0]: "bad-name" is not a valid environment variable name (letters, digits, _)',
    ]
    assert one(BASE.replace("[python, app.py]", "[]")) == "shop.yaml:4 run.command: must not be empty"
    assert one(BASE.replace("[python, app.py]", '["", x]')) == (
        "shop.yaml:4 run.command: the program (first item) must not be empty")
    assert one(BASE.replace("[python, app.py]", "python app.py")) == (
        'shop.yaml:4 run.command: expected a list, got "python app.py"')


def test_secret_env_must_not_be_in_env_nor_twice() -> None:
    assert one(BASE + "  env: {TOKEN: x}\n  secret_env: [TOKEN]\n") == (
        "shop.yaml:6 run.secret_env: TOKEN is also set in run.env; a secret comes only from the daemon's environment")
    assert one(BASE + "  secret_env: [A, A]\n") == "shop.yaml:5 run.secret_env: A is listed twice"


def test_build_section() -> None:
    text = BASE + """\
build:
  steps: [[make], []]
  files:
    /etc/passwd: x
    ../up: y
    ok/file: 3
  env: {A: [1]}
"""
    assert problems(text) == [
        "shop.yaml:6 build.steps[1]: must not be empty",
        'shop.yaml:8 build.files["/etc/passwd"]: "/etc/passwd" must be a path relative to the image root, '
        "not an absolute path",
        "shop.yaml:9 build.files[\"../up\"]: \"../up\" must stay inside the image: '..' is not allowed",
        'shop.yaml:10 build.files["ok/file"]: expected a string, got 3 (quote it: "3")',
        "shop.yaml:11 build.env.A: expected a string, got a list",
    ]


def test_health_section() -> None:
    text = BASE + "health:\n  path: healthz\n  healthy_threshold: 0\n  unhealthy_threshold: x\n"
    assert problems(text) == [
        'shop.yaml:6 health.path: "healthz" must be a URL path starting with / (like /healthz)',
        "shop.yaml:7 health.healthy_threshold: must be at least 1, got 0",
        'shop.yaml:8 health.unhealthy_threshold: expected a whole number, got "x"',
    ]


def test_strategy_needs_exactly_one() -> None:
    both = BASE + "strategy:\n  blue_green: {}\n  canary: {steps: [{set_weight: 5}]}\n"
    assert one(both) == "shop.yaml:5 strategy: give exactly one of blue_green or canary, not blue_green and canary"
    assert one(BASE + "strategy: {}\n") == "shop.yaml:5 strategy: give one of blue_green or canary"
    assert one(BASE + "strategy:\n") == "shop.yaml:5 strategy: expected a mapping (key: value), got nothing"


def test_preview_checks() -> None:
    text = BASE + """\
strategy:
  blue_green:
    preview_checks:
      - {path: /, expect_status: 99, method: "GET /"}
      - {expect_body_contains: 5}
    auto_promote: "yes"
"""
    assert problems(text) == [
        "shop.yaml:8 strategy.blue_green.preview_checks[0].expect_status: must be at least 100, got 99",
        'shop.yaml:8 strategy.blue_green.preview_checks[0].method: "GET /" is not a valid HTTP method',
        "shop.yaml:9 strategy.blue_green.preview_checks[1].path: required key missing",
        'shop.yaml:9 strategy.blue_green.preview_checks[1].expect_body_contains: expected a string, got 5 '
        '(quote it: "5")',
        'shop.yaml:10 strategy.blue_green.auto_promote: expected true or false, got "yes"',
    ]


def test_database_section() -> None:
    assert one(BASE + "database: {url: mysql://x, migrations: m}\n") == (
        'shop.yaml:5 database.url: "mysql://x" is not a valid PostgreSQL URL (postgresql://host:port/db)')
    assert one(BASE + "database: {url: postgresql://h/db, migrations: m, alembic: a.ini}\n") == (
        "shop.yaml:5 database: give exactly one of migrations or alembic, not migrations and alembic")
    assert one(BASE + "database:\n  url: postgresql://h/db\n") == "shop.yaml:5 database: give one of migrations or alembic"
    assert one(BASE + "database: {migrations: m}\n") == "shop.yaml:5 database.url: required key missing"


def test_router_kind() -> None:
    assert one(BASE + "router: {kind: nginx}\n") == (
        'shop.yaml:5 router.kind: must be one of "embedded" or "haproxy"; got "nginx"')
    assert parse_spec(BASE + "router: {kind: haproxy}\n", "shop.yaml", Path("/tmp")).router.kind == "haproxy"
    assert one(BASE + "router: {kind: haproxy, per_try_timeout: 2s}\n") == (
        "shop.yaml:5 router: per_try_timeout is not available with router kind haproxy (HAProxy retries "
        "failed connects, never a slow answer): leave it 0, or use kind: embedded")
    assert one(BASE + "router: {kind: haproxy, queue_size: 10}\n") == (
        "shop.yaml:5 router: queue_size is not available with router kind haproxy (its queue is bounded by "
        "queue_timeout only): remove it, or use kind: embedded")
    with_tls = parse_spec(BASE + "router: {kind: haproxy}\ntls: {cert: a.pem, key: a.key}\n", "shop.yaml", Path("/tmp"))
    assert with_tls.router.kind == "haproxy" and with_tls.tls is not None and with_tls.tls.cert == "a.pem"


def test_router_limits() -> None:
    assert one(BASE + "router: {max_conns_per_instance: 0}\n") == (
        "shop.yaml:5 router.max_conns_per_instance: must be at least 1, got 0")
    assert one(BASE + "router: {max_conns_per_instance: '5'}\n") == (
        'shop.yaml:5 router.max_conns_per_instance: expected a whole number, got "5"')
    assert one(BASE + "router: {queue_size: -1}\n") == "shop.yaml:5 router.queue_size: must be at least 0, got -1"
    assert one(BASE + "router: {queue_timeout: 0s}\n") == (
        "shop.yaml:5 router.queue_timeout: 0s is too short: must be longer than 0s")
    assert one(BASE + "router: {per_try_timeout: 2}\n") == (
        "shop.yaml:5 router.per_try_timeout: 2 is a bare number; durations need a unit (write 2s, not 2)")
    spec = parse_spec(BASE + "router: {max_conns_per_instance: 8, queue_size: 0, queue_timeout: 1500ms, "
                             "per_try_timeout: 0s}\n", "shop.yaml", Path("/tmp"))
    r = spec.router
    assert (r.max_conns_per_instance, r.queue_size, r.queue_timeout, r.per_try_timeout) == (8, 0, 1.5, 0.0)
    d = parse_spec(BASE, "shop.yaml", Path("/tmp")).router
    assert (d.max_conns_per_instance, d.queue_size, d.queue_timeout, d.per_try_timeout) == (64, 4096, 5.0, 0.0)


def test_router_workers() -> None:
    assert parse_spec(BASE, "shop.yaml", Path("/tmp")).router.workers == 1
    assert parse_spec(BASE + "router: {workers: 64}\n", "shop.yaml", Path("/tmp")).router.workers == 64
    assert one(BASE + "router: {workers: 0}\n") == "shop.yaml:5 router.workers: must be at least 1, got 0"
    assert one(BASE + "router: {workers: 65}\n") == "shop.yaml:5 router.workers: must be at most 64, got 65"
    assert one(BASE + "router: {workers: '2'}\n") == 'shop.yaml:5 router.workers: expected a whole number, got "2"'
    assert one(BASE + "router: {kind: haproxy, workers: 2}\n") == (
        "shop.yaml:5 router: workers is the number of embedded router processes, not available with router "
        "kind haproxy (HAProxy's threads are its own configuration): remove it, or use kind: embedded")
    assert one(BASE + "router: {workers: 4, max_conns_per_instance: 3}\n") == (
        "shop.yaml:5 router: max_conns_per_instance 3 is below workers 4: each worker gets "
        "floor(max_conns_per_instance / workers) requests per instance, so some would get none; raise it "
        "or lower workers")
    assert one(BASE + "router: {workers: 4, queue_size: 3}\n").startswith(
        "shop.yaml:5 router: queue_size 3 is below workers 4")
    ok = parse_spec(BASE + "router: {workers: 4, max_conns_per_instance: 4, queue_size: 0}\n", "shop.yaml",
                    Path("/tmp")).router
    assert (ok.workers, ok.max_conns_per_instance, ok.queue_size) == (4, 4, 0)


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = """\
service: Shop_1
listen: nowhere
bulid: {}
run:
  stop_timeout: 10
replicas: 0
router: {kind: nginx}
"""
    assert problems(text) == [
        'shop.yaml:1 service: "Shop_1" must match [a-z0-9-]+ (lowercase letters, digits, dashes)',
        'shop.yaml:2 listen: "nowhere" is not host:port like 127.0.0.1:8080',
        f"shop.yaml:3 bulid: unknown key (expected one of: {TOP_KEYS}); did you mean build?",
        "shop.yaml:4 run.command: required key missing",
        "shop.yaml:5 run.stop_timeout: 10 is a bare number; durations need a unit (write 10s, not 10)",
        "shop.yaml:6 replicas: must be at least 1, got 0",
        'shop.yaml:7 router.kind: must be one of "embedded" or "haproxy"; got "nginx"',
    ]


def test_message_is_the_problem_lines_and_hint_points_to_the_docs() -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(BASE + "replicas: 0\nrouter: {kind: x}\n", "shop.yaml", Path("/tmp"))
    assert info.value.message == "\n".join(info.value.problems)
    assert "docs/spec.md" in (info.value.hint or "")
    assert str(info.value).endswith(f"hint: {info.value.hint}")
