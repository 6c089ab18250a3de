"""Process drift comparison: argv, env names, non-secret values; secrets never shown;
wrappers (#! interpreters, pyenv-style shims) are not drift."""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.drift.processes import ExpectedProcess, LiveProcess, compare, expected_process, through_wrapper
from shipyard.rollout.records import Instance

SECRET = "hunter2-very-secret"
ENV = {"PATH": "/usr/bin:/bin", "LOG_LEVEL": "info", "DB_PASSWORD": SECRET, "STRIPE": SECRET + "x"}
ARGV = ["/usr/bin/python3", "-m", "shop", "--port", "8001"]


def expected() -> ExpectedProcess:
    return ExpectedProcess(list(ARGV), dict(ENV), frozenset({"STRIPE"}))


def test_identical_process_has_no_diff() -> None:
    assert compare(expected(), LiveProcess(list(ARGV), dict(ENV))) == {}


def test_argv_difference() -> None:
    diff = compare(expected(), LiveProcess(ARGV[:-1] + ["9999"], dict(ENV)))
    assert diff["argv"]["actual"][-1] == "9999"
    diff = compare(expected(), LiveProcess(ARGV + [f"--db-password={SECRET}"], dict(ENV)))
    assert diff["argv"]["actual"][-1] == "--db-password=<redacted>"
    assert SECRET not in json.dumps(diff)


def test_env_names_missing_and_extra_and_values() -> None:
    live = {**ENV, "LOG_LEVEL": "debug", "INJECTED": "1"}
    del live["PATH"]
    diff = compare(expected(), LiveProcess(list(ARGV), live))
    assert diff["env_missing"] == ["PATH"]
    assert diff["env_extra"] == ["INJECTED"]
    assert diff["env_changed"] == {"LOG_LEVEL": {"expected": "info", "actual": "debug"}}


def test_secret_values_are_never_compared_nor_shown() -> None:
    live = {**ENV, "DB_PASSWORD": "changed-" + SECRET, "STRIPE": "other-" + SECRET, "API_TOKEN": SECRET}
    diff = compare(expected(), LiveProcess(list(ARGV), live))
    assert diff == {"env_extra": ["API_TOKEN"]}  # declared and secret-looking names: names only
    assert SECRET not in json.dumps(diff)


def test_shebang_interpreter_is_not_drift() -> None:
    exp = ExpectedProcess(["/tree/bin/app", "--port", "1"], {"A": "1"})
    assert through_wrapper(exp.argv, ["/bin/sh", "/tree/bin/app", "--port", "1"]) is True
    assert through_wrapper(exp.argv, ["/usr/bin/env", "python3", "/tree/bin/app", "--port", "1"]) is True
    assert compare(exp, LiveProcess(["/bin/sh", "/tree/bin/app", "--port", "1"], {"A": "1"})) == {}
    assert through_wrapper(exp.argv, ["/bin/sh", "/tree/bin/app", "--port", "2"]) is None


def test_shim_may_add_variables_and_prepend_to_path_but_not_change_ours() -> None:
    exp = ExpectedProcess(["/root/.pyenv/shims/python3", "-m", "shop"], {"PATH": "/usr/bin", "LOG_LEVEL": "info"})
    real = ["/root/.pyenv/versions/3.11.7/bin/python3", "-m", "shop"]
    shimmed = {"PATH": "/root/.pyenv/versions/3.11.7/bin:/usr/bin", "LOG_LEVEL": "info", "PYENV_VERSION": "3.11.7"}
    assert compare(exp, LiveProcess(real, shimmed)) == {}
    diff = compare(exp, LiveProcess(real, {**shimmed, "LOG_LEVEL": "debug"}))
    assert diff["env_changed"] == {"LOG_LEVEL": {"expected": "info", "actual": "debug"}}
    assert diff["wrapper"]["env_added"] == ["PYENV_VERSION"]
    # another program of another name is not a wrapper
    assert "argv" in compare(exp, LiveProcess(["/usr/bin/perl", "-m", "shop"], shimmed))


def test_host_in_argv_is_the_instances_host_and_run_env_host_stays(tmp_path: Path) -> None:
    """The engine puts the host's address for ${HOST} into argv only (engine/actions.launch_spec)."""
    inst = Instance("shop-blue-1", "shop", "blue", "img", "10.9.0.3", 8123, 10, 20, "/i/log", "/i/data")
    exp = expected_process(inst, ["python3", "-m", "shop", "--host", "${HOST}", "--port", "${PORT}"],
                           {"HOST": "db.internal"}, tmp_path)
    assert exp.argv[3:] == ["--host", "10.9.0.3", "--port", "8123"]
    assert exp.env["HOST"] == "db.internal"
