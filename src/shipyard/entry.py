"""The `shipyard` command's entry point. `rollback` is the panic button: it goes to the
daemon before anything heavier than `os` and `_socket` is imported (not Typer, Rich or
pydantic, not even json or pathlib), so the command switches traffic in a few tens of
milliseconds. The daemon answers it in plain text with the exit code in a header.
Everything else, and any case the fast path does not cover, goes to `shipyard.cli`."""

from __future__ import annotations

import os
import sys

ENV_HOME = "SHIPYARD_HOME"     # as in shipyard.paths, which this module must not import (pathlib)


def _parse(argv: list[str]) -> tuple[str, str | None, bool] | None:
    """`rollback SERVICE [--state-dir DIR] [--json]` -> (service, state dir, json); else None."""
    if not argv or argv[0] != "rollback":
        return None
    service, state_dir, as_json = None, None, False
    rest = argv[1:]
    while rest:
        arg = rest.pop(0)
        if arg == "--json":
            as_json = True
        elif arg == "--state-dir" and rest:
            state_dir = rest.pop(0)
        elif arg.startswith("--state-dir="):
            state_dir = arg.split("=", 1)[1]
        elif not arg.startswith("-") and service is None:
            service = arg
        else:
            return None          # --help, typos, ...: the full CLI explains
    return (service, state_dir, as_json) if service else None


def _home(state_dir: str | None) -> str:
    if state_dir:
        return os.path.realpath(os.path.expanduser(state_dir))
    env = os.environ.get(ENV_HOME)
    if env:
        return os.path.realpath(os.path.expanduser(env))
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.realpath(os.path.join(base, "shipyard"))


def _fast_rollback(service: str, state_dir: str | None) -> int | None:
    """One plain-text request; None when anything is unusual (the full CLI then explains).
    It talks through `_socket`, not `socket`: importing `socket` (enum, selectors, idna)
    costs more than the whole switch."""
    import _socket
    home = _home(state_dir)
    try:
        with open(os.path.join(home, "api.json")) as f:
            url = f.read().split('"url"', 1)[1].split('"', 2)[1]      # {"url": "http://host:port", ...}
        with open(os.path.join(home, "token")) as f:
            token = f.read().strip()
        host, _, port = url.removeprefix("http://").rpartition(":")
        host = host.strip("[]")
        actor = f"{os.environ.get('USER') or os.environ.get('LOGNAME') or os.getuid()}@{_socket.gethostname()}"
        request = (f"POST /v1/services/{service}/rollback HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {token}\r\nAccept: text/plain\r\nContent-Length: 0\r\n"
                   f"X-Shipyard-Actor: {actor}\r\nConnection: close\r\n\r\n").encode()
        sock = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET, _socket.SOCK_STREAM)
        try:
            sock.settimeout(600)
            sock.connect((host, int(port)))
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        finally:
            sock.close()
    except (OSError, IndexError, ValueError):
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])}
    if b"x-shipyard-exit" not in headers or headers.get(b"transfer-encoding") == b"chunked":
        return None
    if headers.get(b"x-shipyard-done") == b"0":      # a redeploy of the previous image: follow it
        from shipyard.cli import follow
        from shipyard.client import ApiClient
        from shipyard.paths import StatePaths
        r = follow(ApiClient(StatePaths.resolve(home)), headers[b"x-shipyard-rollout"].decode())
        from shipyard.rollout.model import outcome_line
        sys.stdout.write(outcome_line(r) + "\n")
        return 1 if r["phase"] == "failed" else 0
    code = int(headers[b"x-shipyard-exit"])
    (sys.stderr if code else sys.stdout).write(body.decode(errors="replace"))
    return code


def rollback(service: str, state_dir: str | None, as_json: bool) -> int:
    """`shipyard rollback`, the JSON way (used for --json and when the fast path declines)."""
    import json

    from shipyard.client import ApiClient
    from shipyard.errors import ShipyardError
    from shipyard.paths import StatePaths
    from shipyard.rollout.model import outcome_line
    try:
        client = ApiClient(StatePaths.resolve(state_dir))
        r = client.post(f"/v1/services/{service}/rollback")["rollout"]
    except ShipyardError as e:
        sys.stderr.write(f"error: {e.message}\n" + (f"  hint: {e.hint}\n" if e.hint else ""))
        return e.exit_code
    if r["phase"] not in ("succeeded", "failed", "aborted"):
        from shipyard.cli import follow
        r = follow(client, r["id"], quiet=as_json)
    sys.stdout.write(json.dumps(r, indent=2, sort_keys=True) + "\n" if as_json else outcome_line(r) + "\n")
    return 1 if r["phase"] == "failed" else 0


def main() -> None:
    parsed = _parse(sys.argv[1:])
    if parsed is not None:
        service, state_dir, as_json = parsed
        code = None if as_json else _fast_rollback(service, state_dir)
        sys.exit(rollback(service, state_dir, as_json) if code is None else code)
    from shipyard.cli import main as cli_main
    cli_main()
