"""The CLI as a user runs it: real subprocesses, exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker


def sy(*args: str, state: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


BAD_SPECS = [
    ("scale_down_delay: 10 minutes",
     lambda t: t.replace("scale_down_delay: 10m", "scale_down_delay: 10 minutes"),
     'strategy.blue_green.scale_down_delay: "10 minutes" is not a duration like 10m'),
    ("unknown key", lambda t: t.replace("replicas: 2", "replicas: 2\nreplica_count: 3"),
     "replica_count: unknown key"),
    ("bad service name", lambda t: t.replace("service: shop", "service: Shop_1"), "service:"),
    ("bare number duration", lambda t: t.replace("stop_timeout: 5s", "stop_timeout: 5"), "write 5s"),
    ("missing run", lambda t: t[:t.index("run:")] + t[t.index("health:"):], "run: required key missing"),
    ("yaml syntax", lambda t: t.replace("replicas: 2", "replicas: [2"), "v1.yaml:"),
]


@pytest.mark.parametrize("name,mutate,expected", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_refused_with_file_line_and_key(name: str, mutate, expected: str, make_spec: SpecMaker,
                                                    state_dir: Path) -> None:
    path = make_spec("v1")
    path.write_text(mutate(path.read_text()))
    for argv in (["validate", str(path)], ["deploy", "-f", str(path), "--wait"]):
        res = sy(*argv, state=state_dir)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert expected in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    if name == "scale_down_delay: 10 minutes":
        assert f"v1.yaml:{_line_of(path, 'scale_down_delay')} " in sy("validate", str(path), state=state_dir).stderr


def _line_of(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if key in line)


USAGE_ERRORS = [
    (["deploy"], "Missing option '-f' / '--file'.", "shipyard deploy --help"),
    (["rollback"], "Missing argument 'service'.", "shipyard rollback --help"),
    (["status", "--bogus"], "No such option: --bogus", "shipyard status --help"),
    (["db", "check"], "Missing argument 'file'.", "shipyard db check --help"),
    (["nosuchverb"], "No such command 'nosuchverb'.", "shipyard --help"),
]


@pytest.mark.parametrize("argv,error,helped", USAGE_ERRORS, ids=[" ".join(u[0]) for u in USAGE_ERRORS])
def test_usage_errors_say_what_is_wrong_without_a_traceback(argv: list[str], error: str, helped: str,
                                                            state_dir: Path) -> None:
    res = sy(*argv, state=state_dir)
    assert res.returncode == 2, res
    assert error in res.stderr and f"Try '{helped}' for help." in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout


def test_missing_file_and_missing_daemon(state_dir: Path, make_spec: SpecMaker) -> None:
    res = sy("validate", str(state_dir / "nope.yaml"), state=state_dir)
    assert res.returncode == 2 and "nope.yaml" in res.stderr and "Traceback" not in res.stderr
    res = sy("deploy", "-f", str(make_spec("v1")), state=state_dir)
    assert res.returncode == 5 and "no shipyard daemon is running" in res.stderr
    res = sy("status", state=state_dir)
    assert res.returncode == 5 and "shipyard serve" in res.stderr


def test_deploy_wait_exit_codes_and_read_verbs(daemon: DaemonProcess, make_spec: SpecMaker, state_dir: Path) -> None:
    ok = sy("deploy", "-f", str(make_spec("v1")), "--wait", state=state_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "succeeded" in ok.stdout and "traffic switched to slot" in ok.stdout
    bad = sy("deploy", "-f", str(make_spec("v3")), "--wait", state=state_dir)
    assert bad.returncode == 1 and "failed" in bad.stdout and "answered 500" in bad.stdout
    st = json.loads(sy("status", "shop", "--json", state=state_dir).stdout)
    assert st["live_slot"] and len(st["slots"][st["live_slot"]]["instances"]) == 2
    hist = json.loads(sy("history", "shop", "--json", state=state_dir).stdout)
    assert [h["phase"] for h in hist["rollouts"]] == ["failed", "succeeded"]
    assert [a["action"] for a in hist["audit"]] == ["deploy", "rollout.succeeded", "deploy", "rollout.failed"]
    logs = json.loads(sy("logs", "shop", "--json", state=state_dir).stdout)
    assert len(logs) == 2 and all("listening on" in item["log"] for item in logs)
    imgs = json.loads(sy("images", "--json", state=state_dir).stdout)
    assert len(imgs) == 2
    ver = sy("image", "verify", imgs[0]["id"][:12], state=state_dir)
    assert ver.returncode == 0 and "matches its manifest" in ver.stdout
    nothing = sy("rollback", "shop", state=state_dir)
    assert nothing.returncode != 0 and "no previous release" in nothing.stderr
    prom = sy("promote", "shop", state=state_dir)
    assert prom.returncode == 3 and "nothing to promote" in prom.stderr
    unknown = sy("status", "nosuch", state=state_dir)
    assert unknown.returncode == 4 and "no service named 'nosuch'" in unknown.stderr
    for verb in ("promote", "pause", "resume", "abort", "rollback", "logs", "history", "remove"):
        res = sy(verb, "nosuch", state=state_dir)
        assert (res.returncode, res.stderr.splitlines()[0]) == (4, "error: no service named 'nosuch'"), (verb, res)


def test_tampered_image_is_refused(daemon: DaemonProcess, make_spec: SpecMaker, state_dir: Path) -> None:
    spec = make_spec("v1")
    built = sy("build", str(spec), "--json", state=state_dir)
    assert built.returncode == 0, built.stderr
    image = json.loads(built.stdout)["id"]
    assert sy("image", "verify", image, state=state_dir).returncode == 0
    release = daemon.paths.images / "trees" / image / "release.toml"
    release.chmod(0o644)
    release.write_text('version = "1"\ngreeting = "patched in place"\n')
    release.chmod(0o444)
    ver = sy("image", "verify", image, state=state_dir)
    assert ver.returncode == 1 and "release.toml" in ver.stdout
    res = sy("deploy", "-f", str(spec), "--wait", state=state_dir)
    assert res.returncode == 1
    assert "release.toml" in res.stdout and "failed" in res.stdout


def test_rollback_command_switches_back(daemon: DaemonProcess, make_spec: SpecMaker, state_dir: Path) -> None:
    for v in ("v1", "v2"):
        assert sy("deploy", "-f", str(make_spec(v)), "--wait", state=state_dir).returncode == 0
    res = sy("rollback", "shop", state=state_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "rollback shop-3: succeeded"
    st = json.loads(sy("status", "shop", "--json", state=state_dir).stdout)
    first = json.loads(sy("history", "shop", "--json", state=state_dir).stdout)["rollouts"][-1]
    assert st["live_slot"] == first["target_slot"]
    again = sy("rollback", "shop", "--json", state=state_dir)
    assert again.returncode == 0 and json.loads(again.stdout)["phase"] == "succeeded"
    assert sy("rollback", "nosuch", state=state_dir).returncode == 4
    helped = sy("rollback", "--help", state=state_dir)
    assert helped.returncode == 0 and "warm" in helped.stdout


def test_plan_states_the_blast_radius(daemon: DaemonProcess, make_spec: SpecMaker, state_dir: Path) -> None:
    spec = make_spec("v1", "canary", **{"strategy": {"canary": {
        "steps": [{"set_weight": 5}, {"pause": "60s"}, {"set_weight": 50}],
        "analysis": {"min_requests": 50, "interval": "5s"}}}})
    res = sy("plan", str(spec), "--rate", "200", "--json", state=state_dir)
    assert res.returncode == 2, res.stderr      # a service not deployed yet: everything is a change
    radius = json.loads(res.stdout)["blast_radius"]
    assert (radius["max_share"], radius["requests"], radius["seconds"], radius["step"]) == (5, 50, 5, 2)
    human = sy("plan", str(spec), state=state_dir)
    assert "up to 5% of users, 50 requests" in human.stdout
    bg = json.loads(sy("plan", "-f", str(make_spec("v1")), "--json", state=state_dir).stdout)
    assert bg["blast_radius"]["max_share"] == 100 and bg["blast_radius"]["requests"] is None
    assert sy("plan", state=state_dir).returncode == 1      # an error (2 would mean "changes")
