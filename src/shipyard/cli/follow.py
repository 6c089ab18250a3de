"""`follow`: a rollout's events printed as they happen, until it ends (deploy --wait,
retry --wait, apply, and a rollback that became a redeploy)."""

from __future__ import annotations

import time
from typing import Any

from shipyard.cli.common import out, say, segment, text, ts


def follow(api: Any, rollout_id: str, quiet: bool = False) -> dict[str, Any]:
    """Print a rollout's events as they happen until it ends; return its final state."""
    since = 0
    with out.status(text(f"rollout {rollout_id}"), spinner="dots") as spinner:
        while True:
            doc = api.get(f"/v1/rollouts/{segment(rollout_id)}?since={since}")
            r = doc["rollout"]
            for e in doc["events"]:
                since = e["id"]
                if not quiet and e["kind"] != "build.log":
                    say("[dim]{ts}[/] {message}", ts=ts(e["ts"]), message=e["message"])
            spinner.update(text(f"rollout {rollout_id}: {r['phase']}"))
            if r["phase"] in ("succeeded", "failed", "aborted"):
                break
            time.sleep(0.2)
    if not quiet:
        color = "green" if r["phase"] == "succeeded" else "red"
        say(f"[{color}]{{kind}} {{id}} {{phase}}[/]{{why}}", kind=r["kind"], id=r["id"], phase=r["phase"],
            why=f": {r['reason']}" if r["reason"] else "")
    return r
