"""`shipyard plan | apply | history`: the spec file is the only way to change a service.
`plan` asks the daemon what `apply` would change (and says the blast radius), `apply`
carries it out through the normal rollout, `history` shows what was done, by whom and why.

The blast radius is computed here, from the spec file alone, with `rollout.exposure`: pure
arithmetic over the canary steps (it imports only `spec`), the same library the daemon's
checklist uses; it needs nothing the daemon knows, so it is not part of the plan answer."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from shipyard.cli.common import (
    StateDir,
    client,
    out,
    print_error,
    print_json,
    print_warnings,
    say,
    service_segment,
    text,
)
from shipyard.errors import ConflictError, ShipyardError, SpecError

changes_app = typer.Typer()

JsonOut = typer.Option(False, "--json", help="Print JSON instead of text.")
FileArg = typer.Argument(None, help="The spec file.")
FileOpt = typer.Option(None, "-f", "--file", help="The spec file (same as the argument).")
SHOWN_CHANGES = 40


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
        print_error(e)
        raise typer.Exit(1) from None
    print_warnings(doc)
    if as_json:
        print_json(doc)
    else:
        print_plan(doc)
    raise typer.Exit(doc["exit_code"])


def _plan(path: Path, rate: float, state_dir: str | None) -> dict[str, Any]:
    from shipyard.rollout.exposure import exposure
    from shipyard.spec import load_spec
    if rate <= 0:
        raise SpecError(f"--rate must be a positive number of requests per second, not {rate:g}")
    spec = load_spec(path)
    doc = client(state_dir).post("/v1/plan", {"spec_path": str(path.resolve())})
    e = exposure(spec, rate)
    radius = e.to_dict()
    radius["requests"] = None if e.requests == float("inf") else e.requests
    steps = [describe_step(s) for s in spec.strategy.canary.steps] if spec.strategy.canary is not None else []
    return doc | {"strategy": e.strategy, "replicas": spec.replicas, "listen": spec.listen, "steps": steps,
                  "blast_radius": radius, "rate": rate, "note": e.note}


def print_plan(doc: dict[str, Any]) -> None:
    say("[bold]{service}[/]: {strategy}, {replicas} replica(s), listen {listen}", service=doc["service"],
        strategy=doc["strategy"].replace("_", "-"), replicas=doc["replicas"], listen=doc["listen"])
    for i, step in enumerate(doc["steps"], start=1):
        say("  step {i}: {step}", i=i, step=step)
    changes = doc["changes"]
    if doc["exists"]:
        if doc["image_changed"]:
            say("image {old} -> {new}", old=doc["live_image"][:12], new=doc["image"][:12])
        else:
            say("image {new} unchanged", new=doc["image"][:12])
    for c in changes[:SHOWN_CHANGES]:
        color = "red" if c["refused"] else "yellow" if doc["exists"] else "green"
        mark = "!" if c["refused"] else "~" if doc["exists"] else "+"
        indent = "  " if doc["exists"] and c["area"] == "image" else ""
        say(f"{indent}[{color}]{mark}[/] {{summary}}", summary=c["summary"], soft_wrap=True)
    if len(changes) > SHOWN_CHANGES:
        say("  ... and {n} more (--json lists them all)", n=len(changes) - SHOWN_CHANGES)
    m = doc.get("migrations")
    if m and m["status"] == "pending" and not m.get("expand"):
        say("database: nothing to apply before traffic; held back until `shipyard db contract`: {held}",
            held=", ".join(m["held"]))
    elif m and m["status"] == "up_to_date":
        say("database: up to date")
    for u in doc["unknown"]:
        say("[magenta]?[/] unknown: {u}", u=u, soft_wrap=True)
    for b in doc["blocked"]:
        say("[red]apply would be refused:[/] {b}", b=b, soft_wrap=True)
    radius = doc["blast_radius"]
    requests = "all of them" if radius["requests"] is None else f"{radius['requests']:.0f}"
    say("blast radius at {rate:g} req/s: up to [bold]{share:g}%[/] of users, {requests} requests before the "
        "first possible verdict", rate=doc["rate"], share=radius["max_share"], requests=requests)
    say("  {note}", note=doc["note"])
    if doc["exit_code"] == 0:
        say("[green]no changes[/]: apply has nothing to do")
    elif doc["exit_code"] == 2:
        say("[yellow]{n} change(s)[/]: apply would start a {kind} rollout", n=len(changes),
            kind=doc["strategy"].replace("_", "-"))
    else:
        say("[magenta]cannot tell[/] whether apply would change anything (see unknown above)")


# -- apply ------------------------------------------------------------------------------

@changes_app.command()
def apply(file: Path | None = FileArg, file_opt: Path | None = FileOpt,
          allow_unsafe: str | None = typer.Option(
              None, "--allow-unsafe",
              help="Apply migrations the Database test calls unsafe; the reason goes to the audit log."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Make the service what the spec says, through the normal rollout; exit 0 only if it serves.

    Runs the plan first: nothing to do is exit 0; a change that would be refused is exit 3."""
    from shipyard.cli.follow import follow
    from shipyard.spec import load_spec
    path = _spec_path(file, file_opt, "apply")
    load_spec(path)
    if allow_unsafe is not None and not allow_unsafe.strip():
        raise SpecError("--allow-unsafe needs a reason",
                        'e.g. --allow-unsafe "orders is empty, the lock is brief"')
    api = client(state_dir)
    spec_path = str(path.resolve())
    plan_doc = api.post("/v1/plan", {"spec_path": spec_path})
    shown = print_warnings(plan_doc)
    if plan_doc["blocked"]:
        raise ConflictError("apply cannot proceed: " + "; ".join(plan_doc["blocked"]))
    if not plan_doc["changes"] and not plan_doc["unknown"]:
        if as_json:
            print_json({"plan": plan_doc, "rollout": None, "result": "nothing to do"})
        else:
            say("{service}: nothing to do (image {image} already serves, the spec is unchanged)",
                service=plan_doc["service"], image=plan_doc["image"][:12])
        return
    seen = [c["summary"] for c in plan_doc["changes"]] + [f"unknown: {u}" for u in plan_doc["unknown"]]
    if not as_json:
        mark = "[yellow]~[/]" if plan_doc["exists"] else "[green]+[/]"
        for line in seen[:SHOWN_CHANGES]:
            say(f"{mark} {{line}}", line=line, soft_wrap=True)
    body: dict[str, Any] = {"spec_path": spec_path, "image": plan_doc["image"], "plan": seen}
    if allow_unsafe:
        body["allow_unsafe"] = allow_unsafe.strip()
    deployed = api.post("/v1/deploy", body)
    print_warnings(deployed, shown)
    final = follow(api, deployed["rollout"]["id"], quiet=as_json)
    if as_json:
        print_json({"plan": plan_doc, "rollout": final, "result": final["phase"]})
    if final["phase"] != "succeeded":
        raise typer.Exit(1)


# -- history ----------------------------------------------------------------------------

@changes_app.command()
def history(service: str, limit: int = typer.Option(50, "--limit", "-n", help="Entries of each kind."),
            state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Past rollouts and the audit log of a service: who changed what, when and why."""
    name = service_segment(service)
    api = client(state_dir)
    rollouts = api.get(f"/v1/services/{name}/history?limit={limit}")["rollouts"]
    audit = api.get(f"/v1/audit?service={name}&limit={limit}")["audit"]
    if as_json:
        print_json({"rollouts": rollouts, "audit": audit})
        return
    t = Table("ROLLOUT", "KIND", "PHASE", "SLOT", "IMAGE", "STARTED", "REASON", title="rollouts")
    for r in rollouts:
        image = r["image_id"][:12] if r["image_id"] else "-"
        t.add_row(*(text(v) for v in (r["id"], r["kind"], r["phase"], r["target_slot"], image,
                                      _time(r["created_at"]), r["reason"] or "")))
    out.print(t)
    a = Table("TIME", "ACTOR", "ACTION", "ROLLOUT", "WHY",
              title="audit log (oldest first; --json has the evidence)")
    for e in audit:
        a.add_row(*(text(v) for v in (_time(e["ts"]), e["actor"], e["action"], e["rollout_id"] or "-", e["why"])))
    out.print(a)


def _time(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"
