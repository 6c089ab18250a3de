"""Where the Python CLI starts (`shipyard-py`, `python -m shipyard`). The `shipyard`
command itself (bin/shipyard) sends `rollback` to the daemon from bash; when it cannot
(no bash, --json, a refused token, ...) the rollback lands here, and goes to the daemon
before anything heavier than `os` and `_socket` is imported (not Typer, Rich or pydantic,
not even json or pathlib). The daemon answers it in plain text with the exit code in a
header. Everything else, and any case this fast path does not cover, goes to
`shipyard.cli.app`. The two fast paths accept the same arguments and treat answers the same
way. Keep this module's imports as they are: `import shipyard.cli.entry` loads nothing but
`shipyard`, `shipyard.cli`, `shipyard.cli.plaintext` (which imports nothing) and this file
(tests/unit/cli/test_cli_entry.py checks)."""

import os
import sys

from shipyard.cli.plaintext import plain, valid_service_name

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


class _Lost(Exception):
    """The request went out but its answer is unusable: the daemon may have acted on it."""


def _fast_rollback(service: str, state_dir: str | None) -> int | None:
    """One plain-text request; None when it declines, which it only does before the request
    is sent or when the token was refused (nothing happened; the full CLI then explains).
    Once the daemon may have acted, it reports instead of trying again: a rollback sent
    twice would switch back. It talks through `_socket`, not `socket`: importing `socket`
    (enum, selectors, idna) costs more than the whole switch."""
    import _socket
    if not valid_service_name(service):
        return None
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
    except (OSError, IndexError, ValueError):
        return None
    try:
        try:
            sock.settimeout(600)
            sock.connect((host, int(port)))
            sock.sendall(request)       # all of it or an error: a partial request is never acted on
        except (OSError, ValueError):
            return None
        try:
            return _answer(service, home, sock)
        except _Lost as e:
            sys.stderr.write(plain(f"error: the rollback of {service} was sent but the daemon's answer {e}\n"
                                   f"  hint: see what happened with: shipyard status {service}\n"))
            return 1
    finally:
        sock.close()


def _answer(service: str, home: str, sock: object) -> int | None:
    chunks = []
    try:
        while chunk := sock.recv(65536):         # type: ignore[attr-defined]
            chunks.append(chunk)
    except TimeoutError:
        raise _Lost("did not come within 600 s") from None
    except OSError as e:
        raise _Lost(f"did not come ({e})") from None
    if not chunks:
        raise _Lost("did not come: the connection closed without one")
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ")
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise _Lost(f"was not HTTP ({lines[0][:100].decode(errors='replace')})")
    if status[1] == b"401":
        return None                               # refused before acting: the full CLI explains the token
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    code = headers.get(b"x-shipyard-exit", b"")
    if not code.isdigit() or headers.get(b"transfer-encoding") == b"chunked":
        raise _Lost(f"was HTTP {status[1].decode(errors='replace')} without an exit code: "
                    f"{body[:300].decode(errors='replace')}")
    if headers.get(b"x-shipyard-done") == b"0":      # a redeploy of the previous image: follow it
        rollout = headers.get(b"x-shipyard-rollout", b"").decode()
        if not rollout:
            raise _Lost("named no rollout to follow")
        from shipyard.cli.rollback import rollback
        return rollback(service, home, False, follow=rollout)
    (sys.stderr if int(code) else sys.stdout).write(plain(body.decode(errors="replace")))
    return int(code)


def main() -> None:
    parsed = _parse(sys.argv[1:])
    if parsed is not None:
        service, state_dir, as_json = parsed
        code = None if as_json else _fast_rollback(service, state_dir)
        if code is None:
            from shipyard.cli.rollback import rollback
            code = rollback(service, state_dir, as_json)
        sys.exit(code)
    from shipyard.cli.app import main as cli_main
    cli_main()
