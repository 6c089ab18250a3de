"""`shipyard hosts`: every host of every fleet service, as it is now (reachable or why not,
shipyard version, disk, load, instances); `shipyard hosts check SERVICE`: could each of
the service's hosts run it, OK or FAIL with the step that failed and why (exit 1 if any
host fails, so a pipeline can gate on it)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from shipyard.cli.common import JsonOut, StateDir, client, out, print_error, print_json, say, text
from shipyard.errors import ShipyardError
from shipyard.fleet.host_status import bytes_text

hosts_app = typer.Typer(name="hosts", invoke_without_command=True, no_args_is_help=False,
                        help="Fleet hosts: how each is now, and whether each can run a service.")

STATE_STYLE = {"up": "green", "unreachable": "red", "no helper": "yellow", "draining": "yellow", "lost": "red",
               "removed": "dim"}
CHECK_TIMEOUT = 1800.0
"""A check ships the image to every host that lacks it: a large image to many hosts takes a while."""


@hosts_app.callback()
def hosts(ctx: typer.Context, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """List every host of every fleet service: state, shipyard version, disk, load, instances."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        doc = client(state_dir, timeout=600).get("/v1/hosts")
    except ShipyardError as e:
        print_error(e)
        raise typer.Exit(1) from None
    if as_json:
        print_json(doc)
        return
    if not doc["hosts"]:
        say("no fleet hosts: no stored service has a fleet section")
        return
    print_hosts(doc["hosts"])


def print_hosts(rows: list[dict[str, Any]]) -> None:
    t = Table("NAME", "ADDRESS", "STATE", "VERSION", "DISK", "LOAD", "INSTANCES", show_lines=False)
    for h in rows:
        facts = h.get("facts") or {}
        host = facts.get("host") or {}
        disk = host.get("disk") or {}
        load = host.get("load") or []
        t.add_row(text(h["name"]), text(h["address"]), text(h["state"], STATE_STYLE.get(h["state"], "")),
                  text(facts.get("helper_version") or "-"),
                  text(f"{bytes_text(disk['free'])} free of {bytes_text(disk['total'])}" if disk else "-"),
                  text(f"{load[0]:.2f} ({host.get('cpu_count') or '?'} cpu)" if load else "-"),
                  text(_instances(h)))
    out.print(t)
    for h in rows:
        if h.get("error"):
            say("[red]{name}[/]: {error}", name=h["name"], error=h["error"], soft_wrap=True)
            if h.get("hint"):
                say("  [dim]hint:[/] {hint}", hint=h["hint"], soft_wrap=True)


def _instances(h: dict[str, Any]) -> str:
    insts = h.get("instances") or []
    if not insts:
        return "0"
    per: dict[str, int] = {}
    for i in insts:
        per[i["service"]] = per.get(i["service"], 0) + 1
    return f"{len(insts)} (" + ", ".join(f"{s} {n}" for s, n in sorted(per.items())) + ")"


@hosts_app.command("check")
def check(service: str = typer.Argument(..., help="The fleet service whose hosts to check."),
          verbose: bool = typer.Option(False, "-v", "--verbose", help="Show every step of every host."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Can each host run SERVICE: SSH and host key, python3, helper, disk, ports, image shipped and verified."""
    try:
        doc = client(state_dir, timeout=CHECK_TIMEOUT).post("/v1/hosts/check", {"service": service})
    except ShipyardError as e:
        print_error(e)
        raise typer.Exit(1) from None
    if as_json:
        print_json(doc)
    else:
        print_check(doc, verbose)
    if not doc["ok"]:
        raise typer.Exit(1)


def print_check(doc: dict[str, Any], verbose: bool = False) -> None:
    failed = sum(1 for h in doc["hosts"] if not h["ok"])
    verdict = "[green]every host can run it[/]" if not failed else f"[red]{failed} host(s) cannot run it[/]"
    image = (doc.get("image_id") or "")[:12] or "no image yet"
    say(f"[bold]{{service}}[/] (image {{image}}): {verdict}", service=doc["service"], image=image)
    for h in doc["hosts"]:
        if h["ok"]:
            say("  [green]OK  [/] {name:<12} {address:<16} [dim]{seconds:.2f}s[/]", name=h["name"],
                address=h["address"], seconds=h["seconds"])
        else:
            say("  [red]FAIL[/] {name:<12} {address:<16} {reason}", name=h["name"], address=h["address"],
                reason=h["reason"], soft_wrap=True)
            hint = next((s.get("hint") for s in h["steps"] if s["status"] == "fail"), None)
            if hint:
                say("       [dim]hint:[/] {hint}", hint=hint, soft_wrap=True)
        if verbose:
            for s in h["steps"]:
                style = {"ok": "green", "fail": "red"}.get(s["status"], "dim")
                say(f"       [{style}]{{status:<4}}[/] {{step:<7}} {{detail}}", status=s["status"], step=s["name"],
                    detail=s["detail"], soft_wrap=True)
