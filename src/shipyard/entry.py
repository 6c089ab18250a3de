"""The `shipyard` command's entry point. `rollback` is the panic button: it is sent to
the daemon before the full CLI (Typer, Rich, pydantic) is even imported, so the command
switches traffic in tens of milliseconds. Everything else goes to `shipyard.cli`."""

from __future__ import annotations

import json
import os
import sys

TERMINAL = ("succeeded", "failed", "aborted")


def _fast_rollback(argv: list[str]) -> int | None:
    """Handle `rollback SERVICE [--state-dir DIR] [--json]`; None for anything else."""
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
    if service is None:
        return None
    return rollback(service, state_dir, as_json)


def rollback(service: str, state_dir: str | None, as_json: bool) -> int:
    """`shipyard rollback`: one request; a cold redeploy is then followed like a deploy."""
    from shipyard.client import ApiClient
    from shipyard.errors import ShipyardError
    from shipyard.paths import ENV_HOME, StatePaths
    try:
        client = ApiClient(StatePaths.resolve(state_dir or os.environ.get(ENV_HOME)))
        r = client.post(f"/v1/services/{service}/rollback")["rollout"]
    except ShipyardError as e:
        sys.stderr.write(f"error: {e.message}\n" + (f"  hint: {e.hint}\n" if e.hint else ""))
        return e.exit_code
    if r["phase"] not in TERMINAL:       # a redeploy of the previous image: follow it with the full CLI
        from shipyard.cli import follow
        r = follow(client, r["id"], quiet=as_json)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"{r['kind']} {r['id']}: {r['phase']}" + (f" ({r['reason']})" if r["reason"] else "") + "\n")
    return 1 if r["phase"] == "failed" else 0


def main() -> None:
    code = _fast_rollback(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from shipyard.cli import main as cli_main
    cli_main()
