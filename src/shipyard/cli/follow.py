"""`follow`: a rollout's events printed as they happen, until it ends (deploy --wait,
retry --wait, apply, and a rollback that became a redeploy).

The rollout is the daemon's, not this command's: it goes on while the daemon restarts
(the new daemon resumes it from the store). So a lost daemon is waited for, with the
address and token read again from the state dir on every try (a restarted daemon may
listen on another port), and following resumes where it stopped; only a daemon gone for
longer than SHIPYARD_RECONNECT_TIMEOUT (default 60 s) ends the command."""

from __future__ import annotations

import os
import time
from typing import Any

from shipyard.cli.common import err, out, say, segment, text, ts
from shipyard.errors import DaemonUnavailable

RECONNECT_ENV = "SHIPYARD_RECONNECT_TIMEOUT"
RECONNECT_DEFAULT = 60.0
FIRST_BACKOFF, MAX_BACKOFF = 0.2, 2.0


def follow(api: Any, rollout_id: str, quiet: bool = False) -> dict[str, Any]:
    """Print a rollout's events as they happen until it ends; return its final state."""
    since = 0
    phase = "running"
    with out.status(text(f"rollout {rollout_id}"), spinner="dots") as spinner:
        while True:
            path = f"/v1/rollouts/{segment(rollout_id)}?since={since}"
            try:
                doc = api.get(path)
            except DaemonUnavailable as lost:
                doc = reconnect(api, path, rollout_id, phase, lost)
            r = doc["rollout"]
            phase = r["phase"]
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


def reconnect(api: Any, path: str, rollout_id: str, phase: str, lost: DaemonUnavailable) -> dict[str, Any]:
    """GET `path` again once the daemon is back (said once on stderr), backing off from
    0.2 s to 2 s; past the reconnect timeout, one message naming the rollout and what to do."""
    bound = reconnect_timeout()
    say("the daemon went away; reconnecting (rollout {id} is still {phase})...", to=err,
        id=rollout_id, phase=phase)
    deadline = time.monotonic() + bound
    pause = FIRST_BACKOFF
    while True:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, MAX_BACKOFF)
        try:
            api.reload()
            doc = api.get(path)
        except DaemonUnavailable as e:
            lost = e
            if time.monotonic() >= deadline:
                break
            continue
        say("reconnected to the daemon; following rollout {id} again", to=err, id=rollout_id)
        return doc
    raise DaemonUnavailable(
        f"lost the daemon while following rollout {rollout_id}, and it did not come back within {bound:g}s "
        f"({lost.message})",
        f"the rollout goes on whenever a daemon runs for this state dir: start it with `shipyard serve` if it "
        f"is down, then see where rollout {rollout_id} is with `shipyard status` (wait longer with "
        f"{RECONNECT_ENV}=SECONDS)")


def reconnect_timeout() -> float:
    """Seconds to wait for a lost daemon: SHIPYARD_RECONNECT_TIMEOUT, else 60. Read only
    when the daemon is lost: a bad value is said and the default used, since the rollout
    being followed was sent already and must not lose its watcher over it."""
    raw = os.environ.get(RECONNECT_ENV, "").strip()
    if not raw:
        return RECONNECT_DEFAULT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value >= 0 and value != float("inf"):
        return value
    say("[yellow]warning:[/] {env}={raw} is not a number of seconds (0 or more); waiting {default}s", to=err,
        env=RECONNECT_ENV, raw=raw, default=f"{RECONNECT_DEFAULT:g}")
    return RECONNECT_DEFAULT
