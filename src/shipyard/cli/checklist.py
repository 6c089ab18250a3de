"""`shipyard checklist [SERVICE]`: the seed's four questions (Undo, Blast radius, Drift,
Database), each PASS / WARN / FAIL with its evidence. Exit 1 on any FAIL (or an error), 0
otherwise: a WARN is for a human to read, not a reason to stop a pipeline."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer

from shipyard.checklist import REFERENCE_RATE
from shipyard.cli.common import StateDir, client, print_error, print_json, say, service_segment
from shipyard.errors import ShipyardError

COLORS = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
TITLES = {"undo": "Undo", "blast_radius": "Blast radius", "drift": "Drift", "database": "Database"}


def checklist(service: str | None = typer.Argument(None, help="One service (default: every service)."),
              rate: float = typer.Option(REFERENCE_RATE, "--rate",
                                         help="Requests per second the Blast-radius test assumes."),
              state_dir: str | None = StateDir,
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")) -> None:
    """Can we undo, how far does a bad release reach, has anything drifted, is the schema safe?"""
    try:
        api = client(state_dir, timeout=600)
        rate_q = quote(f"{rate:g}")                     # 1e+06: a bare '+' in a query is a space
        if service:
            docs = [api.get(f"/v1/services/{service_segment(service)}/checklist?rate={rate_q}")]
        else:
            docs = api.get(f"/v1/checklist?rate={rate_q}")["services"]
    except ShipyardError as e:
        print_error(e)
        raise typer.Exit(1) from None
    if as_json:
        print_json(docs[0] if service else docs)
    else:
        if not docs:
            say("no services")
        for doc in docs:
            print_report(doc)
    if any(c["status"] == "FAIL" for d in docs for c in d["checks"]):
        raise typer.Exit(1)


def print_report(doc: dict[str, Any]) -> None:
    color = COLORS.get(doc["status"], "magenta")
    say(f"[bold]{{service}}[/]: [{color}]{{status}}[/]", service=doc["service"], status=doc["status"])
    for c in doc["checks"]:
        cc = COLORS.get(c["status"], "magenta")
        say(f"  [{cc}]{{status:<4}}[/] [bold]{{title:<12}}[/] {{summary}}", status=c["status"],
            title=TITLES.get(c["name"], c["name"]), summary=c["summary"], soft_wrap=True)
        if c["action"]:
            say("       [dim]do:[/] {action}", action=c["action"], soft_wrap=True)
