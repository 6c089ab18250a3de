"""`shipyard rollback`, the JSON way: for --json, when both fast paths decline (bin/shipyard
and cli/entry.py), and to follow a rollback they sent that became a redeploy. Its own
module so that the entry, the Typer verb and `follow` need no import of one another."""

from __future__ import annotations

import sys

from shipyard.cli.plaintext import name_refusal, outcome_line, plain, valid_service_name


def rollback(service: str, state_dir: str | None, as_json: bool, follow: str | None = None) -> int:
    """`shipyard rollback`, the JSON way (used for --json and when the fast path declines).
    With `follow`, the rollback was already sent (by a fast path) and became rollout
    `follow`, a redeploy: only watch it to its end."""
    import json
    from urllib.parse import quote

    from shipyard.client import ApiClient
    from shipyard.errors import ShipyardError
    from shipyard.paths import StatePaths
    try:
        if not valid_service_name(service):
            from shipyard.errors import SpecError
            raise SpecError(*name_refusal(service))
        client = ApiClient(StatePaths.resolve(state_dir))
        r = (client.get(f"/v1/rollouts/{quote(follow, safe='')}") if follow
             else client.post(f"/v1/services/{service}/rollback"))["rollout"]
        if r["phase"] not in ("succeeded", "failed", "aborted"):
            from shipyard.cli.follow import follow as watch
            r = watch(client, r["id"], quiet=as_json)      # rides out a daemon restart, or says why not
    except ShipyardError as e:
        sys.stderr.write(plain(f"error: {e.message}\n" + (f"  hint: {e.hint}\n" if e.hint else "")))
        return e.exit_code
    sys.stdout.write(json.dumps(r, indent=2, sort_keys=True) + "\n" if as_json else plain(outcome_line(r)) + "\n")
    return 1 if r["phase"] == "failed" else 0
