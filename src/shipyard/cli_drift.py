"""`shipyard drift [SERVICE]`: is what runs exactly what was deployed? Exit codes follow
Terraform's convention - 0 clean, 2 drift found, 1 error - so scripts can gate on it."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shipyard.errors import ShipyardError
from shipyard.paths import ENV_HOME, StatePaths

out = Console()
err = Console(stderr=True)
EXIT_DRIFT = 2


def drift(service: str | None = typer.Argument(None, help="One service (default: every service)."),
          full: bool = typer.Option(False, "--full", help="Re-hash every file of every image tree."),
          fix: bool = typer.Option(False, "--fix", help="Replace drifted instances with fresh ones "
                                   "(never edits a running instance)."),
          state_dir: str | None = typer.Option(None, "--state-dir", envvar=ENV_HOME, help="State directory."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Compare what runs with what was deployed: release, content, process and unmanaged drift."""
    from shipyard.client import ApiClient
    try:
        client = ApiClient(StatePaths.resolve(state_dir), timeout=1800)
        names = [service] if service else [s["service"] for s in client.get("/v1/services")["services"]]
        body = {"mode": "full" if full else "metadata", "fix": fix}
        docs = [client.post(f"/v1/services/{name}/drift", body) for name in names]
    except ShipyardError as e:         # 2 means "drift found" here: every error is 1
        err.print(f"[red]error:[/] {e.message}", highlight=False)
        if e.hint:
            err.print(f"  [dim]hint:[/] {e.hint}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(docs if service is None else docs[0], indent=2, sort_keys=True) + "\n")
    else:
        for doc in docs:
            _print(doc)
    reports = [d["after"] if "after" in d else d["report"] for d in docs]
    if any(not r["clean"] for r in reports):
        raise typer.Exit(EXIT_DRIFT)


def _print(doc: dict[str, Any]) -> None:
    if "heal" in doc:
        _report(doc["before"], doc.get("enforcement"))
        h = doc["heal"]
        for r in h["replaced"]:
            out.print(f"  [green]healed[/] {r['drifted']} -> {r['successor']} (fresh instance from the pristine image)",
                      highlight=False)
        for iid in h["stopped"]:
            out.print(f"  [green]stopped[/] {iid} (its slot should be gone)", highlight=False)
        for iid in h["failed"]:
            out.print(f"  [red]not healed[/] {iid}: see `shipyard history` for why", highlight=False)
        out.print("after the fix:", highlight=False)
        _report(doc["after"], None)
    else:
        _report(doc["report"], doc.get("enforcement"))


def _report(r: dict[str, Any], enforcement: dict[str, Any] | None) -> None:
    when = datetime.fromtimestamp(r["scanned_at"]).strftime("%H:%M:%S")
    what = (f"{r['instances_scanned']} instance(s), {r['files_checked']} file(s)"
            + (f", {r['bytes_hashed'] / 1e6:.1f} MB hashed" if r["bytes_hashed"] else ""))
    verdict = "[green]clean[/]" if r["clean"] else f"[red]drift[/] ({len(r['findings'])} finding(s))"
    out.print(f"[bold]{r['service']}[/]: {verdict} - {r['mode']} scan at {when}, {what} in {r['seconds']:.2f}s",
              highlight=False)
    if enforcement:
        out.print(f"  enforcement: {enforcement['mode']} ({enforcement['reason']})", highlight=False)
    if r["findings"]:
        t = Table("KIND", "INSTANCE", "WHAT", show_lines=False)
        for f in r["findings"]:
            kind = "[yellow]unknown[/]" if f["kind"] == "unknown" else f["kind"]
            t.add_row(kind, f.get("instance_id") or "-", f["detail"])
        out.print(t)
    for note in r.get("notes", []):
        out.print(f"  [dim]{note}[/]", highlight=False)
