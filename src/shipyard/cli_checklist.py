"""`shipyard checklist [SERVICE]`: the seed's four questions (Undo, Blast radius, Drift,
Database), each PASS / WARN / FAIL with its evidence. Exit 1 on any FAIL (or an error), 0
otherwise: a WARN is for a human to read, not a reason to stop a pipeline."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console

from shipyard.checklist import REFERENCE_RATE
from shipyard.errors import ShipyardError
from shipyard.paths import ENV_HOME, StatePaths

out = Console()
err = Console(stderr=True)
COLORS = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
TITLES = {"undo": "Undo", "blast_radius": "Blast radius", "drift": "Drift", "database": "Database"}


def checklist(service: str | None = typer.Argument(None, help="One service (default: every service)."),
              rate: float = typer.Option(REFERENCE_RATE, "--rate",
                                         help="Requests per second the Blast-radius test assumes."),
              state_dir: str | None = typer.Option(None, "--state-dir", envvar=ENV_HOME, help="State directory."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")) -> None:
    """Can we undo, how far does a bad release reach, has anything drifted, is the schema safe?"""
    from shipyard.client import ApiClient
    try:
        client = ApiClient(StatePaths.resolve(state_dir), timeout=600)
        if service:
            docs = [client.get(f"/v1/services/{quote(service, safe='')}/checklist?rate={rate:g}")]
        else:
            docs = client.get(f"/v1/checklist?rate={rate:g}")["services"]
    except ShipyardError as e:
        err.print(f"[red]error:[/] {e.message}", highlight=False)
        if e.hint:
            err.print(f"  [dim]hint:[/] {e.hint}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(docs[0] if service else docs, indent=2, sort_keys=True) + "\n")
    else:
        if not docs:
            out.print("no services", highlight=False)
        for doc in docs:
            print_report(doc)
    if any(c["status"] == "FAIL" for d in docs for c in d["checks"]):
        raise typer.Exit(1)


def print_report(doc: dict[str, Any]) -> None:
    color = COLORS[doc["status"]]
    out.print(f"[bold]{doc['service']}[/]: [{color}]{doc['status']}[/]", highlight=False)
    for c in doc["checks"]:
        cc = COLORS[c["status"]]
        out.print(f"  [{cc}]{c['status']:<4}[/] [bold]{TITLES.get(c['name'], c['name']):<12}[/] {c['summary']}",
                  highlight=False, soft_wrap=True)
        if c["action"]:
            out.print(f"       [dim]do:[/] {c['action']}", highlight=False, soft_wrap=True)
