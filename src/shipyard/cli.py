"""`shipyard <verb>`: a thin client of the daemon's API, plus the verbs that need no
daemon (validate, schema, build, image verify). Every failure is one clear message and a
non-zero exit code; every read verb takes --json."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shipyard.cli_changes import changes_app
from shipyard.cli_checklist import checklist as checklist_cmd
from shipyard.cli_db import db_app
from shipyard.cli_drift import drift as drift_cmd
from shipyard.errors import ShipyardError, SpecError
from shipyard.paths import ENV_HOME, StatePaths

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-downtime deploys for HTTP services on your own machines.")
image_app = typer.Typer(no_args_is_help=True, help="Inspect images.")
app.add_typer(image_app, name="image")
app.add_typer(db_app, name="db")
app.command("drift")(drift_cmd)
app.command("checklist")(checklist_cmd)
app.add_typer(changes_app)     # plan, apply, history
out = Console()
err = Console(stderr=True)

StateDir = typer.Option(None, "--state-dir", envvar=ENV_HOME,
                        help="State directory (default ~/.local/state/shipyard).")
JsonOut = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _paths(state_dir: str | None) -> StatePaths:
    return StatePaths.resolve(state_dir)


def _client(state_dir: str | None):  # noqa: ANN202 - keeps the import lazy
    from shipyard.client import ApiClient
    return ApiClient(_paths(state_dir))


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S") if t else "-"


def _short(image: str | None) -> str:
    return image[:12] if image else "-"


# -- no daemon needed -------------------------------------------------------------------

@app.command()
def validate(file: Path = typer.Argument(..., help="The spec file.")) -> None:
    """Check a spec file; print every problem with its file:line."""
    from shipyard.spec import load_spec, spec_warnings
    spec = load_spec(file)
    for warning in spec_warnings(spec):
        err.print(f"warning: {warning}", markup=False, highlight=False)
    strategy = "blue_green" if spec.strategy.blue_green is not None else "canary"
    out.print(f"[green]ok[/] {file}: service {spec.service}, {spec.replicas} replica(s), {strategy}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of shipyard.yaml (for editors)."""
    from shipyard.spec import json_schema
    _print_json(json_schema())


@app.command()
def build(file: Path = typer.Argument(..., help="The spec file."), state_dir: str | None = StateDir,
          no_cache: bool = typer.Option(False, "--no-cache", help="Run the build steps even if no input changed."),
          as_json: bool = JsonOut) -> None:
    """Build the image of a spec into the local image store; print its id."""
    import asyncio

    from shipyard.building import build_input
    from shipyard.images import ImageStore
    from shipyard.spec import load_spec
    spec = load_spec(file)
    store = ImageStore(_paths(state_dir).ensure().images)
    log = (lambda _line: None) if as_json else (lambda line: err.print(f"[dim]  {line}[/]", highlight=False))
    image = asyncio.run(store.build(build_input(spec), log=log, use_cache=not no_cache))
    if as_json:
        _print_json({"id": image.id, "service": image.service, "files": image.files, "size": image.size})
    else:
        out.print(f"image [bold]{image.id}[/] ({image.files} files, {image.size} bytes)")


@app.command()
def images(service: str | None = typer.Option(None, "--service", "-s"), state_dir: str | None = StateDir,
           as_json: bool = JsonOut) -> None:
    """List images in the local store, newest first."""
    from shipyard.images import ImageStore
    items = ImageStore(_paths(state_dir).ensure().images).list(service)
    if as_json:
        _print_json([{"id": i.id, "service": i.service, "created_at": i.created_at, "files": i.files,
                      "size": i.size} for i in items])
        return
    t = Table("IMAGE", "SERVICE", "CREATED", "FILES", "SIZE")
    for i in items:
        t.add_row(_short(i.id), i.service, _ts(i.created_at), str(i.files), f"{i.size / 1024:.1f} KiB")
    out.print(t)


@image_app.command("verify")
def image_verify(image_id: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Re-hash an image's tree against its manifest; exit 1 if anything changed."""
    from shipyard.images import ImageStore
    store = ImageStore(_paths(state_dir).ensure().images)
    image = store.get(image_id)
    store.materialize(image.id)
    report = store.verify(image.id)
    if as_json:
        _print_json({"id": image.id, "ok": report.ok, "changed": report.changed, "missing": report.missing,
                     "added": report.added})
    elif report.ok:
        out.print(f"[green]ok[/] image {image.id} matches its manifest")
    else:
        out.print(f"[red]modified[/] image {image.id}:\n{report.summary()}")
    if not report.ok:
        raise typer.Exit(1)


# -- the daemon -------------------------------------------------------------------------

@app.command()
def serve(state_dir: str | None = StateDir,
          listen: str = typer.Option("127.0.0.1:0", help="API address; port 0 picks a free port."),
          api_host: list[str] = typer.Option([], "--api-host", help="Also answer to this Host name "
                                             "(besides localhost and loopback addresses); repeatable."),
          insecure_listen: bool = typer.Option(False, "--insecure-listen", help="Allow a non-loopback --listen "
                                               "without TLS (the token then crosses the network in clear).")) -> None:
    """Run the daemon in the foreground: controller, supervisor, API."""
    from shipyard.server.daemon import run
    run(state_dir, listen, tuple(api_host), insecure_listen)


@app.command()
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
    client = _client(state_dir)
    body = {"spec_path": str(file.resolve())} | ({"allow_unsafe": allow_unsafe.strip()} if allow_unsafe else {})
    r = client.post("/v1/deploy", body)["rollout"]
    if not wait:
        _print_json(r) if as_json else out.print(f"rollout [bold]{r['id']}[/] started (phase {r['phase']})")
        return
    final = follow(client, r["id"], quiet=as_json)
    if as_json:
        _print_json(final)
    if final["phase"] != "succeeded":
        raise typer.Exit(1)


def follow(client: Any, rollout_id: str, quiet: bool = False) -> dict[str, Any]:
    """Print a rollout's events as they happen until it ends; return its final state."""
    since = 0
    with out.status(f"rollout {rollout_id}", spinner="dots") as status:
        while True:
            doc = client.get(f"/v1/rollouts/{rollout_id}?since={since}")
            r = doc["rollout"]
            for e in doc["events"]:
                since = e["id"]
                if not quiet and e["kind"] != "build.log":
                    out.print(f"[dim]{_ts(e['ts'])}[/] {e['message']}", highlight=False)
            status.update(f"rollout {rollout_id}: {r['phase']}")
            if r["phase"] in ("succeeded", "failed", "aborted"):
                break
            time.sleep(0.2)
    if not quiet:
        color = "green" if r["phase"] == "succeeded" else "red"
        out.print(f"[{color}]{r['kind']} {r['id']} {r['phase']}[/]" + (f": {r['reason']}" if r["reason"] else ""),
                  highlight=False)
    return r


@app.command()
def status(service: str | None = typer.Argument(None), state_dir: str | None = StateDir,
           as_json: bool = JsonOut) -> None:
    """Live slot, image, instances and rollout of one or all services."""
    client = _client(state_dir)
    docs = [client.get(f"/v1/services/{service}")] if service else client.get("/v1/services")["services"]
    if as_json:
        _print_json(docs[0] if service else docs)
        return
    if not docs:
        out.print("no services deployed yet (shipyard deploy -f FILE)")
    for d in docs:
        out.print(f"[bold]{d['service']}[/] on {d['listen']}: live slot [bold]{d['live_slot'] or '-'}[/] "
                  f"image {_short(d['live_image'])}")
        r = d["rollout"]
        if r:
            out.print(f"  rollout {r['id']} ({r['kind']}, {r['strategy'].replace('_', '-')}): [yellow]{r['phase']}[/]"
                      f" -> slot {r['target_slot']}", highlight=False)
            if r["strategy"] == "canary":
                hold = f"; {r['paused_reason']}" if r["paused_reason"] else ""
                out.print(f"  canary takes {r['weight']:g}% of users, step {r['step_index'] + 1}{hold}",
                          highlight=False)
        analysis = d.get("analysis")
        if analysis:
            for v in analysis.get("verdicts", []):
                color = {"failed": "red", "successful": "green"}.get(v["status"], "yellow")
                out.print(f"  [{color}]{v['status']:>12}[/] {v['metric']} ({v['kind']}): {v['detail']}",
                          highlight=False)
        t = Table("SLOT", "STATE", "IMAGE", "INSTANCE", "STATUS", "PID", "PORT")
        for name, s in d["slots"].items():
            state = f"{s['state']} {s['weight']:g}%" if s["state"] == "canary" else s["state"]
            insts = s["instances"] or [None]
            for i in insts:
                t.add_row(name, state, _short(s["image"]), i["id"] if i else "-", i["status"] if i else "-",
                          str(i["pid"]) if i else "-", str(i["port"]) if i else "-")
        out.print(t)
        drift, enforcement = d.get("drift"), d.get("enforcement")
        if drift:
            verdict = "[green]clean[/]" if drift["clean"] else f"[red]{drift['findings']} finding(s)[/] (shipyard drift)"
            out.print(f"  drift: {verdict}, last {drift['mode']} scan {_ts(drift['scanned_at'])}, "
                      f"last full scan {_ts(drift.get('last_full_at'))}", highlight=False)
        if enforcement:
            out.print(f"  image trees: {enforcement['mode']} ({enforcement['reason']})", highlight=False)


@app.command()
def promote(service: str, full: bool = typer.Option(False, "--full", help="Canary: skip the remaining steps."),
            state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Blue-green: switch a release waiting for promotion. Canary: go past the current step."""
    r = _client(state_dir).post(f"/v1/services/{service}/promote", {"full": full})["rollout"]
    _print_rollout(r, as_json)
    if r["phase"] in ("failed", "aborted"):
        raise typer.Exit(1)


@app.command()
def pause(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Canary: hold the current weight until `shipyard resume`."""
    _print_rollout(_client(state_dir).post(f"/v1/services/{service}/pause")["rollout"], as_json)


@app.command()
def resume(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Canary: continue after `shipyard pause` (redoes the interrupted step)."""
    _print_rollout(_client(state_dir).post(f"/v1/services/{service}/resume")["rollout"], as_json)


@app.command()
def abort(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Stop the rollout in progress; every user goes back to the release that served before."""
    _print_rollout(_client(state_dir).post(f"/v1/services/{service}/abort")["rollout"], as_json)


@app.command()
def retry(service: str, wait: bool = typer.Option(False, "--wait", help="Follow it; exit 0 only if it serves."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Start the last failed or aborted deploy again (same spec, same image)."""
    client = _client(state_dir)
    r = client.post(f"/v1/services/{service}/retry")["rollout"]
    if wait:
        r = follow(client, r["id"], quiet=as_json)
    _print_rollout(r, as_json)
    if wait and r["phase"] != "succeeded":
        raise typer.Exit(1)


def _print_rollout(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(r)
        return
    extra = ""
    if r.get("strategy") == "canary" and r["phase"] not in ("succeeded", "failed", "aborted"):
        extra = f", canary at {r['weight']:g}%, step {r['step_index'] + 1}"
    why = r.get("paused_reason") or r.get("reason")
    out.print(f"{r['id']}: {r['phase']}{extra}" + (f" ({why})" if why else ""), highlight=False)


@app.command()
def rollback(service: str, state_dir: str | None = StateDir, as_json: bool = JsonOut,
             follow: str | None = typer.Option(None, "--follow", hidden=True,
                                               help="Watch rollout ID, a rollback already sent.")) -> None:
    """Go back to the previous release: a switch while its slot is warm, else a redeploy."""
    from shipyard.entry import rollback as run  # one implementation, normally run before the CLI loads
    raise typer.Exit(run(service, state_dir, as_json, follow))


@app.command()
def logs(service: str, lines: int = typer.Option(50, "--lines", "-n"),
         instance: str | None = typer.Option(None, "--instance", "-i"),
         state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """The last lines of each live instance's log."""
    q = f"?lines={lines}" + (f"&instance={instance}" if instance else "")
    items = _client(state_dir).get(f"/v1/services/{service}/logs{q}")["logs"]
    if as_json:
        _print_json(items)
        return
    for item in items:
        out.rule(f"{item['instance']} ({item['slot']}, {item['status']})")
        sys.stdout.write(item["log"] + ("" if item["log"].endswith("\n") else "\n"))


@app.command()
def remove(service: str, state_dir: str | None = StateDir) -> None:
    """Stop a service entirely (instances and router); its history is kept."""
    _client(state_dir).request("DELETE", f"/v1/services/{service}")
    out.print(f"service {service} removed")


@app.command()
def demo(keep: bool = typer.Option(False, "--keep", help="Leave the daemon and service running."),
         state_dir: str | None = typer.Option(None, "--state-dir", help="Default: a new temporary dir.")) -> None:
    """Deploy the example shop blue-green under traffic, roll back, refuse a broken release."""
    from shipyard.demo import run_demo
    raise typer.Exit(run_demo(keep=keep, state_dir=state_dir))


def main() -> None:
    try:
        rc = app(standalone_mode=False, prog_name="shipyard")
    except ShipyardError as e:
        err.print(f"[red]error:[/] {e.message}", highlight=False)
        if e.hint:
            err.print(f"  [dim]hint:[/] {e.hint}", highlight=False)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors and the like
        # by class name: Typer >= 0.20 raises its own vendored copy of click's exceptions
        kinds = {c.__name__ for c in type(e).__mro__}
        if "ClickException" in kinds:
            e.show()                                     # type: ignore[attr-defined]
            sys.exit(e.exit_code)                        # type: ignore[attr-defined]
        if "Abort" in kinds:
            sys.exit(130)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
