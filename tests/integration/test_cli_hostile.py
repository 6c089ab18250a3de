"""Hostile or careless input at the CLI (issue 11): whatever an app logs, a spec is named or
a user types, the CLI prints it as text, never as Rich markup or raw terminal escapes, and
never sends a broken or injected HTTP request; the daemon's warnings reach stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shipyard.devtools.daemonproc import DaemonProcess
from support import SpecMaker
from support.standins import OneShotDaemon

MARKUP = "[ALERT] [/usr/sbin/x.main()] boom"
ESCAPES = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b[H\x9b31m"       # OSC 52 clipboard write, screen clear, C1 CSI
SHOWN = "^[]52;c;ZXZpbA==^G^[[2J^[[H\\x9b31m"
LOG_LINE = f"{MARKUP} {ESCAPES}"


def sy(*args: str, state: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(state), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def printed_as_text(res: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr of a run that did not crash and let no escape through to the terminal."""
    both = res.stdout + res.stderr
    assert "Traceback" not in both and "MarkupError" not in both, both
    assert "\x1b" not in both and "\x9b" not in both and "\x07" not in both, repr(both)
    return both


def hostile_command(then: str) -> list[str]:
    """An app that writes LOG_LINE to its log, then `then` (python code)."""
    return ["python3", "-c", f"import sys; print({LOG_LINE!r}, flush=True); {then}"]


# -- with a real daemon -----------------------------------------------------------------

def test_a_failing_app_s_log_is_printed_as_text(daemon: DaemonProcess, make_spec: SpecMaker,
                                               state_dir: Path) -> None:
    good = make_spec("v1")
    assert sy("deploy", "-f", str(good), "--wait", state=state_dir).returncode == 0
    bad = make_spec("v2", "hostile", **{"run.command": hostile_command("sys.exit(1)")})
    res = sy("deploy", "-f", str(bad), "--wait", state=state_dir)
    out = printed_as_text(res)
    assert res.returncode == 1, out
    assert MARKUP in res.stdout and SHOWN in res.stdout, res.stdout
    res = sy("history", "shop", state=state_dir)
    printed_as_text(res)
    assert res.returncode == 0 and "failed" in res.stdout, res.stdout
    assert "[ALERT]" in res.stdout and "^[]52" in res.stdout, res.stdout


def test_logs_show_escapes_unless_raw(daemon: DaemonProcess, make_spec: SpecMaker, state_dir: Path) -> None:
    spec = make_spec("v1", **{"run.command": hostile_command(
        "import runpy; sys.argv = ['shop', '--port', '${PORT}']; runpy.run_module('shop', run_name='__main__')")})
    res = sy("deploy", "-f", str(spec), "--wait", state=state_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    res = sy("logs", "shop", state=state_dir)
    printed_as_text(res)
    assert res.returncode == 0 and f"{MARKUP} {SHOWN}" in res.stdout, res.stdout
    raw = sy("logs", "shop", "--raw", state=state_dir)
    assert raw.returncode == 0 and LOG_LINE in raw.stdout, raw.stdout


# -- no daemon needed -------------------------------------------------------------------

def test_markup_in_a_spec_s_service_name_or_file_name(make_spec: SpecMaker, state_dir: Path) -> None:
    named = make_spec("v1", "named")
    named.write_text(named.read_text().replace("service: shop", "service: '[/bold]'"))
    res = sy("validate", str(named), state=state_dir)
    assert res.returncode == 2 and 'service: "[/bold]" must match [a-z0-9-]+' in printed_as_text(res), res.stderr
    odd_dir = state_dir / "specs" / "x["
    odd_dir.mkdir()
    odd = odd_dir / "bold].yaml"                          # the path reads x[/bold].yaml
    odd.write_text(make_spec("v1").read_text())
    res = sy("validate", str(odd), state=state_dir)
    assert res.returncode == 0 and f"ok {odd}: service shop" in printed_as_text(res), res.stdout
    broken = odd_dir / "[bold]broken.yaml"
    broken.write_text(odd.read_text().replace("replicas: 2", "replicas: [2"))
    res = sy("validate", str(broken), state=state_dir)
    assert res.returncode == 2 and "[bold]broken.yaml:" in printed_as_text(res), res.stderr


# -- a stand-in daemon that records what the CLI sends ----------------------------------

class FakeDaemon:
    """Answers the CLI's requests with canned JSON by path; records each request line."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                owner.requests.append(self.requestline)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                doc = next((d for p, d in answers.items() if path == p), None)
                body = json.dumps(doc if doc is not None else {"error": "not here", "kind": "NotFoundError"})
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def state_dir(self, root: Path) -> Path:
        root.mkdir(exist_ok=True)
        port = self.server.server_address[1]
        (root / "api.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": 1}))
        (root / "token").write_text("t0ken\n")
        return root

    def __enter__(self) -> FakeDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


BAD_NAMES = ["my shop", "caf\u00e9", "shop\r\nX-Evil: 1", "a/b", "[/bold]", "Shop", "../v1/services", "x" * 41]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_cannot_be_a_service_is_refused_before_any_request(name: str, tmp_path: Path) -> None:
    with FakeDaemon({}) as d:
        refused_before_any_request(name, d, d.state_dir(tmp_path / "state"))


def refused_before_any_request(name: str, d: FakeDaemon, state: Path) -> None:
    for argv in (["status", name], ["logs", name], ["history", name], ["abort", name], ["remove", name],
                 ["rollback", name], ["rollback", name, "--json"], ["db", "contract", name]):
        res = sy(*argv, state=state)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert "cannot be a service name" in printed_as_text(res), (argv, res.stderr)
    for argv in (["drift", name], ["checklist", name]):         # their convention: every error is 1
        res = sy(*argv, state=state)
        assert res.returncode == 1 and "cannot be a service name" in printed_as_text(res), (argv, res.stderr)
    assert d.requests == []


def test_other_values_in_a_request_are_percent_encoded(tmp_path: Path) -> None:
    with FakeDaemon({"/v1/services/shop/logs": {"logs": []}}) as d:
        res = sy("logs", "shop", "--instance", "shop blue\r\nX-Evil: 1", state=d.state_dir(tmp_path / "state"))
    assert res.returncode == 0, res.stderr
    assert d.requests == ["GET /v1/services/shop/logs?lines=50&instance=shop%20blue%0D%0AX-Evil%3A%201 HTTP/1.1"]


WARNING = "run.env.DB_PASSWORD looks like a secret; use secret_env"
PLAN = {"service": "shop", "exists": False, "image": "0123456789abcdef", "image_changed": True, "exit_code": 2,
        "changes": [{"summary": "new service shop", "refused": False, "area": "service"}], "unknown": [],
        "blocked": [], "migrations": None, "warnings": [WARNING, "[/bold] \x1b[2J"]}
ROLLOUT = {"id": "shop-1", "kind": "deploy", "phase": "succeeded", "reason": "", "strategy": "blue_green"}


def test_the_daemon_s_warnings_go_to_stderr(tmp_path: Path, make_spec: SpecMaker) -> None:
    answers = {"/v1/plan": PLAN, "/v1/deploy": {"rollout": ROLLOUT | {"phase": "building"}, "warnings": [WARNING]},
               "/v1/rollouts/shop-1": {"rollout": ROLLOUT, "events": []}}
    with FakeDaemon(answers) as d:
        warned_once_each(d.state_dir(tmp_path / "state"), str(make_spec("v1")))


def warned_once_each(state: Path, spec: str) -> None:
    expected = f"warning: {WARNING}\nwarning: [/bold] ^[[2J\n"
    for argv, code in ((["plan", spec], 2), (["plan", spec, "--json"], 2), (["apply", spec], 0)):
        res = sy(*argv, state=state)
        printed_as_text(res)
        assert res.returncode == code, (argv, res.stdout, res.stderr)
        assert res.stderr == expected, (argv, res.stderr)           # once each, though plan and deploy both warn
        assert "warning:" not in res.stdout
    res = sy("deploy", "-f", spec, state=state)
    assert res.returncode == 0 and res.stderr == f"warning: {WARNING}\n", res.stderr
    assert "rollout shop-1 started" in res.stdout


# -- the rollback fast paths print the daemon's text the same way, escapes shown ---------

LAUNCHER = Path(__file__).resolve().parents[2] / "bin" / "shipyard"
TEXT = f"rollback shop-2: failed ({MARKUP} {ESCAPES} caf\u00e9 \u202eevil\u2028 \u00e9\ufeff\x01\x7f)\r\n"


def text_answer(exit_code: int, body: str, header: bool = True) -> bytes:
    """A plain-text rollback answer like the daemon's (or, without `header`, a bare 500)."""
    data = body.encode()
    head = (f"HTTP/1.1 {200 if header else 500} OK\r\n"
            + (f"X-Shipyard-Exit: {exit_code}\r\nX-Shipyard-Done: 1\r\n" if header else "")
            + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode() + data


@pytest.mark.parametrize("exit_code,header", [(0, True), (1, True), (1, False)], ids=["ok", "failed", "lost"])
def test_both_fast_paths_show_the_daemon_s_escapes(exit_code: int, header: bool, tmp_path: Path) -> None:
    from shipyard.cli.plaintext import plain
    d = OneShotDaemon(text_answer(exit_code, TEXT, header))
    try:
        state = d.state_dir(tmp_path / "state")
        base = {k: v for k, v in os.environ.items() if k not in ("SHIPYARD_HOME", "SHIPYARD_NO_FAST_PATH")}
        env = base | {"PATH": "/usr/local/bin:/usr/bin:/bin", "SHIPYARD_HOME": str(state)}   # no shipyard-py
        runs = [subprocess.run([shell, str(LAUNCHER), "rollback", "shop"], capture_output=True, timeout=60, env=env)
                for shell in ("/bin/sh", "/bin/bash")]
        runs.append(subprocess.run([sys.executable, "-m", "shipyard", "rollback", "shop"], capture_output=True,
                                   timeout=60, env=base | {"SHIPYARD_HOME": str(state)}))
    finally:
        d.close()
    shown = plain(TEXT)
    for res in runs:
        out, err = res.stdout.decode(), res.stderr.decode()
        assert res.returncode == exit_code, (out, err)
        if not header:
            assert err.startswith(plain(f"error: the rollback of shop was sent but the daemon's answer was HTTP 500 "
                                        f"without an exit code: {TEXT}")), err
        else:
            assert (out, err) == ((shown, "") if exit_code == 0 else ("", shown)), (out, err)
        assert "\x1b" not in out + err and "\u202e" not in out + err
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout and runs[0].stderr == runs[1].stderr == runs[2].stderr
