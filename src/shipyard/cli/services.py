"""The verbs that act on a running service through the daemon: `deploy`, `status`,
`promote`, `pause`, `resume`, `abort`, `retry`, `rollback`, `logs`, `remove`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from shipyard.cli.common import (
    JsonOut,
    StateDir,
    client,
    out,
    print_json,
    print_warnings,
    say,
    segment,
    service_segment,
    short,
    text,
    ts,
)
from shipyard.cli.follow import follow
from shipyard.cli.plaintext import plain
from shipyard.errors import SpecError


def register(app: typer.Typer) -> None:
    for verb in (deploy, status, promote, pause, resume, abort, retry, rollback, logs, remove):
        app.command()(verb)


def deploy(file: Path = typer.Option(..., "-f", "--file", help="The spec file."),
           wait: bool = typer.Option(False, "--wait", help="Follow the rollout; exit 0 only if the release serves."),
           allow_unsafe: str | None = typer.Option(None, "--allow-unsafe", help="Apply migrations the Database "
                                                   "test calls unsafe; the reason goes to the audit log."),
           state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Roll out the release described by a spec file (builds its image if needed)."""
    from shipyard.spec import load_spec
    load_spec(file)   # fail fast, with file:line, before talking to the daemon
    if allow_unsafe is not None and not allow_unsafe.strip():
        raise SpecError("--allow-unsafe needs a reason", 'e.g. --allow-unsafe "orders is empty, the lock is brief"')
    api = client(state_dir)
    body = {"spec_path": str(file.resolve())} | ({"allow_unsafe": allow_unsafe.strip()} if allow_unsafe else {})
    doc = api.post("/v1/deploy", body)
    print_warnings(doc)
    r = doc["rollout"]
    if not wait:
        if as_json:
            print_json(r)
        else:
            say("rollout [bold]{id}[/] started (phase {phase})", id=r["id"], phase=r["phase"])
        return
    final = follow(api, r["id"], quiet=as_json)
    if as_json:
        print_json(final)
    if final["phase"] != "succeeded":
        raise typer.Exit(1)


def status(service: str | None = typer.Argument(None), state_dir: str | None = StateDir,
           as_json: bool = JsonOut) -> None:
    """Live slot, image, instances and rollout of one or all services."""
    name = service_segment(service) if service else None      # a bad name is refused before any request
    api = client(state_dir)
    docs = [api.get(f"/v1/services/{name}")] if name else api.get("/v1/services")["services"]
    if as_json:
        print_json(docs[0] if service else docs)
        return
    if not docs:
        say("no services deployed yet (shipyard deploy -f FILE)")
    for d in docs:
        _print_status(d)


def _print_status(d: dict[str, Any]) -> None:
    say("[bold]{service}[/] on {listen}: live slot [bold]{slot}[/] image {image}", service=d["service"],
        listen=d["listen"], slot=d["live_slot"] or "-", image=short(d["live_image"]))
    r = d["rollout"]
    if r:
        say("  rollout {id} ({kind}, {strategy}): [yellow]{phase}[/] -> slot {slot}", id=r["id"], kind=r["kind"],
            strategy=r["strategy"].replace("_", "-"), phase=r["phase"], slot=r["target_slot"])
        if r.get("held"):
            say("  [yellow]held at this step[/]: {why}; it goes on once the state store writes again", why=r["held"])
        elif r.get("driven") is False:
            say("  [red]not driven by this daemon[/]: restart the daemon to resume it")
        if r["strategy"] == "canary":
            say("  canary takes {weight:g}% of users, step {step}{hold}", weight=r["weight"],
                step=r["step_index"] + 1, hold=f"; {r['paused_reason']}" if r["paused_reason"] else "")
    for v in (d.get("analysis") or {}).get("verdicts", []):
        color = {"failed": "red", "successful": "green"}.get(v["status"], "yellow")
        say(f"  [{color}]{{status:>12}}[/] {{metric}} ({{kind}}): {{detail}}", status=v["status"],
            metric=v["metric"], kind=v["kind"], detail=v["detail"])
    t = Table("SLOT", "STATE", "IMAGE", "INSTANCE", "STATUS", "PID", "PORT")
    for name, s in d["slots"].items():
        state = f"{s['state']} {s['weight']:g}%" if s["state"] == "canary" else s["state"]
        for i in s["instances"] or [None]:
            t.add_row(text(name), text(state), text(short(s["image"])), text(i["id"] if i else "-"),
                      text(i["status"] if i else "-"), text(i["pid"] if i else "-"), text(i["port"] if i else "-"))
    out.print(t)
    if tls := d.get("tls"):
        soon = tls["days_left"] < 14
        say(f"  tls: certificate {{fp}} for {{names}}, valid until {{until}} ([{'red' if soon else 'green'}]"
            f"{{days}} days left[/]){{redirect}}", fp=tls["fingerprint"], names=", ".join(tls["names"]) or "-",
            until=tls["not_after_iso"], days=f"{tls['days_left']:g}",
            redirect=f"; http on {tls['redirect_http']} redirects to https" if tls.get("redirect_http") else "")
    drift, enforcement = d.get("drift"), d.get("enforcement")
    if drift:
        verdict = "[green]clean[/]" if drift["clean"] else "[red]{findings} finding(s)[/] (shipyard drift)"
        say(f"  drift: {verdict}, last {{mode}} scan {{at}}, last full scan {{full}}", findings=drift["findings"],
            mode=drift["mode"], at=ts(drift["scanned_at"]), full=ts(drift.get("last_full_at")))
    if enforcement:
        say("  image trees: {mode} ({reason})", mode=enforcement["mode"], reason=enforcement["reason"])


def _act(service: str, verb: str, state_dir: str | None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    name = service_segment(service)
    return client(state_dir).post(f"/v1/services/{name}/{verb}", body)["rollout"]


def promote(service: str, full: bool = typer.Option(False, "--full", help="Canary: skip the remaining steps."),
            state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Blue-green: switch a release waiting for promotion. Canary: go past the current step."""
    r = _act(service, "promote", state_dir, {"full": full})
    _print_rollout(r, as_json)
    if r["phase"] in ("failed", "aborted"):
        raise typer.Exit(1)


def pause(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Canary: hold the current weight until `shipyard resume`."""
    _print_rollout(_act(service, "pause", state_dir), as_json)


def resume(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Canary: continue after `shipyard pause` (redoes the interrupted step)."""
    _print_rollout(_act(service, "resume", state_dir), as_json)


def abort(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Stop the rollout in progress; every user goes back to the release that served before."""
    _print_rollout(_act(service, "abort", state_dir), as_json)


def retry(service: str, wait: bool = typer.Option(False, "--wait", help="Follow it; exit 0 only if it serves."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Start the last failed or aborted deploy again (same spec, same image)."""
    name = service_segment(service)
    api = client(state_dir)
    r = api.post(f"/v1/services/{name}/retry")["rollout"]
    if wait:
        r = follow(api, r["id"], quiet=as_json)
    _print_rollout(r, as_json)
    if wait and r["phase"] != "succeeded":
        raise typer.Exit(1)


def _print_rollout(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(r)
        return
    extra = ""
    if r.get("strategy") == "canary" and r["phase"] not in ("succeeded", "failed", "aborted"):
        extra = f", canary at {r['weight']:g}%, step {r['step_index'] + 1}"
    why = r.get("paused_reason") or r.get("reason")
    say("{id}: {phase}{extra}{why}", id=r["id"], phase=r["phase"], extra=extra, why=f" ({why})" if why else "")


def rollback(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut,
             follow: str | None = typer.Option(None, "--follow", hidden=True,
                                               help="Watch rollout ID, a rollback already sent.")) -> None:
    """Go back to the previous release: a switch while its slot is warm, else a redeploy."""
    from shipyard.cli.rollback import rollback as run  # one implementation, normally run before the CLI loads
    raise typer.Exit(run(service, state_dir, as_json, follow))


def logs(service: str, lines: int = typer.Option(50, "--lines", "-n"),
         instance: str | None = typer.Option(None, "--instance", "-i"),
         raw: bool = typer.Option(False, "--raw", help="Pass the logs' bytes through as they are, terminal "
                                  "escapes included (default: escapes are shown, not obeyed)."),
         state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """The last lines of each live instance's log."""
    name = service_segment(service)
    q = f"?lines={lines}" + (f"&instance={segment(instance)}" if instance else "")
    items = client(state_dir).get(f"/v1/services/{name}/logs{q}")["logs"]
    if as_json:
        print_json(items)
        return
    for item in items:
        out.rule(text(f"{item['instance']} ({item['slot']}, {item['status']})"))
        log = item["log"] if raw else plain(item["log"])
        sys.stdout.write(log + ("" if log.endswith("\n") else "\n"))
        sys.stdout.flush()


def remove(service: str, state_dir: str | None = StateDir) -> None:
    """Stop a service entirely (instances and router); its history is kept."""
    name = service_segment(service)
    client(state_dir).request("DELETE", f"/v1/services/{name}")
    say("service {service} removed", service=service)
