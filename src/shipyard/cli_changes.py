"""`shipyard plan | apply | history`: the spec file is the only way to change a service.
`plan` asks the daemon what `apply` would change (and says the blast radius), `apply`
carries it out through the normal rollout, `history` shows what was done, by whom and why."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shipyard.errors import ConflictError, ShipyardError, SpecError
from shipyard.paths import ENV_HOME, StatePaths

changes_app = typer.Typer()
out = Console()
err = Console(stderr=True)

StateDir = typer.Option(None, "--state-dir", envvar=ENV_HOME,
                        help="State directory (default ~/.local/state/shipyard).")
JsonOut = typer.Option(False, "--json", help="Print JSON instead of text.")
FileArg = typer.Argument(None, help="The spec file.")
FileOpt = typer.Option(None, "-f", "--file", help="The spec file (same as the argument).")
SHOWN_CHANGES = 40


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def _client(state_dir: str | None):  # noqa: ANN202 - keeps the import lazy
    from shipyard.client import ApiClient
    return ApiClient(StatePaths.resolve(state_dir))


def _spec_path(file: Path | None, file_opt: Path | None, verb: str) -> Path:
    path = file or file_opt
    if path is None:
        raise SpecError("no spec file given", f"shipyard {verb} FILE (or -f FILE)")
    return path


def describe_step(step: Any) -> str:
    from shipyard.spec import format_duration
    if hasattr(step, "set_weight"):
        return f"send {step.set_weight:g}% of users to the canary"
    if hasattr(step, "pause"):
        d = step.pause.duration
        return "hold until `shipyard promote`" if d is None else f"hold for {format_duration(d)}"
    return f"analyse for {format_duration(step.analysis.duration)}"


# -- plan -------------------------------------------------------------------------------

@changes_app.command()
def plan(file: Path | None = FileArg, file_opt: Path | None = FileOpt,
         rate: float = typer.Option(200.0, "--rate", help="Requests per second the service gets."),
         state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """What `apply` would change, and why; changes nothing. Exit 0 none, 2 changes, 1 error.

    Also states the blast radius: the users and requests a bad release reaches before the
    first possible verdict. Exit 1 too when it cannot tell (e.g. the database is unreachable)."""
    try:
        doc = _plan(_spec_path(file, file_opt, "plan"), rate, state_dir)
    except ShipyardError as e:       # Terraform's convention: every error is 1 (2 means "changes")
        err.print(f"[red]error:[/] {e.message}", highlight=False)
        if e.hint:
            err.print(f"  [dim]hint:[/] {e.hint}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        _print_json(doc)
    else:
        print_plan(doc)
    raise typer.Exit(doc["exit_code"])


def _plan(path: Path, rate: float, state_dir: str | None) -> dict[str, Any]:
    from shipyard.rollout.exposure import exposure
    from shipyard.spec import load_spec
    if rate <= 0:
        raise SpecError(f"--rate must be a positive number of requests per second, not {rate:g}")
    spec = load_spec(path)
    doc = _client(state_dir).post("/v1/plan", {"spec_path": str(path.resolve())})
    e = exposure(spec, rate)
    radius = e.to_dict()
    radius["requests"] = None if e.requests == float("inf") else e.requests
    steps = [describe_step(s) for s in spec.strategy.canary.steps] if spec.strategy.canary is not None else []
    return doc | {"strategy": e.strategy, "replicas": spec.replicas, "listen": spec.listen, "steps": steps,
                  "blast_radius": radius, "rate": rate, "note": e.note}


def print_plan(doc: dict[str, Any]) -> None:
    p = out.print
    p(f"[bold]{doc['service']}[/]: {doc['strategy'].replace('_', '-')}, {doc['replicas']} replica(s), "
      f"listen {doc['listen']}", highlight=False)
    for i, step in enumerate(doc["steps"], start=1):
        p(f"  step {i}: {step}", highlight=False)
    changes = doc["changes"]
    if doc["exists"]:
        image = (f"image {doc['live_image'][:12]} -> {doc['image'][:12]}" if doc["image_changed"]
                 else f"image {doc['image'][:12]} unchanged")
        p(image, highlight=False)
    for c in changes[:SHOWN_CHANGES]:
        color = "red" if c["refused"] else "yellow" if doc["exists"] else "green"
        mark = "!" if c["refused"] else "~" if doc["exists"] else "+"
        indent = "  " if doc["exists"] and c["area"] == "image" else ""
        p(f"{indent}[{color}]{mark}[/] {c['summary']}", highlight=False, soft_wrap=True)
    if len(changes) > SHOWN_CHANGES:
        p(f"  ... and {len(changes) - SHOWN_CHANGES} more (--json lists them all)", highlight=False)
    m = doc.get("migrations")
    if m and m["status"] == "pending" and not m.get("expand"):
        p(f"database: nothing to apply before traffic; held back until `shipyard db contract`: "
          f"{', '.join(m['held'])}", highlight=False)
    elif m and m["status"] == "up_to_date":
        p("database: up to date", highlight=False)
    for u in doc["unknown"]:
        p(f"[magenta]?[/] unknown: {u}", highlight=False, soft_wrap=True)
    for b in doc["blocked"]:
        p(f"[red]apply would be refused:[/] {b}", highlight=False, soft_wrap=True)
    radius = doc["blast_radius"]
    requests = "all of them" if radius["requests"] is None else f"{radius['requests']:.0f}"
    p(f"blast radius at {doc['rate']:g} req/s: up to [bold]{radius['max_share']:g}%[/] of users, "
      f"{requests} requests before the first possible verdict", highlight=False)
    p(f"  {doc['note']}", highlight=False)
    if doc["exit_code"] == 0:
        p("[green]no changes[/]: apply has nothing to do", highlight=False)
    elif doc["exit_code"] == 2:
        kind = doc["strategy"].replace("_", "-")
        p(f"[yellow]{len(changes)} change(s)[/]: apply would start a {kind} rollout", highlight=False)
    else:
        p("[magenta]cannot tell[/] whether apply would change anything (see unknown above)", highlight=False)


# -- apply ------------------------------------------------------------------------------

@changes_app.command()
def apply(file: Path | None = FileArg, file_opt: Path | None = FileOpt,
          allow_unsafe: str | None = typer.Option(
              None, "--allow-unsafe",
              help="Apply migrations the Database test calls unsafe; the reason goes to the audit log."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Make the service what the spec says, through the normal rollout; exit 0 only if it serves.

    Runs the plan first: nothing to do is exit 0; a change that would be refused is exit 3."""
    from shipyard.cli import follow
    from shipyard.spec import load_spec
    path = _spec_path(file, file_opt, "apply")
    load_spec(path)
    if allow_unsafe is not None and not allow_unsafe.strip():
        raise SpecError("--allow-unsafe needs a reason",
                        'e.g. --allow-unsafe "orders is empty, the lock is brief"')
    client = _client(state_dir)
    spec_path = str(path.resolve())
    plan_doc = client.post("/v1/plan", {"spec_path": spec_path})
    if plan_doc["blocked"]:
        raise ConflictError("apply cannot proceed: " + "; ".join(plan_doc["blocked"]))
    if not plan_doc["changes"] and not plan_doc["unknown"]:
        if as_json:
            _print_json({"plan": plan_doc, "rollout": None, "result": "nothing to do"})
        else:
            out.print(f"{plan_doc['service']}: nothing to do (image {plan_doc['image'][:12]} already serves, "
                      "the spec is unchanged)", highlight=False)
        return
    seen = [c["summary"] for c in plan_doc["changes"]] + [f"unknown: {u}" for u in plan_doc["unknown"]]
    if not as_json:
        mark = "[yellow]~[/]" if plan_doc["exists"] else "[green]+[/]"
        for line in seen[:SHOWN_CHANGES]:
            out.print(f"{mark} {line}", highlight=False, soft_wrap=True)
    body: dict[str, Any] = {"spec_path": spec_path, "image": plan_doc["image"], "plan": seen}
    if allow_unsafe:
        body["allow_unsafe"] = allow_unsafe.strip()
    r = client.post("/v1/deploy", body)["rollout"]
    final = follow(client, r["id"], quiet=as_json)
    if as_json:
        _print_json({"plan": plan_doc, "rollout": final, "result": final["phase"]})
    if final["phase"] != "succeeded":
        raise typer.Exit(1)


# -- history ----------------------------------------------------------------------------

@changes_app.command()
def history(service: str, limit: int = typer.Option(50, "--limit", "-n", help="Entries of each kind."),
            state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Past rollouts and the audit log of a service: who changed what, when and why."""
    client = _client(state_dir)
    rollouts = client.get(f"/v1/services/{service}/history?limit={limit}")["rollouts"]
    audit = client.get(f"/v1/audit?service={service}&limit={limit}")["audit"]
    if as_json:
        _print_json({"rollouts": rollouts, "audit": audit})
        return
    t = Table("ROLLOUT", "KIND", "PHASE", "SLOT", "IMAGE", "STARTED", "REASON", title="rollouts")
    for r in rollouts:
        image = r["image_id"][:12] if r["image_id"] else "-"
        t.add_row(r["id"], r["kind"], r["phase"], r["target_slot"], image, _time(r["created_at"]),
                  r["reason"] or "")
    out.print(t)
    a = Table("TIME", "ACTOR", "ACTION", "ROLLOUT", "WHY",
              title="audit log (oldest first; --json has the evidence)")
    for e in audit:
        a.add_row(_time(e["ts"]), e["actor"], e["action"], e["rollout_id"] or "-", e["why"])
    out.print(a)


def _time(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"
