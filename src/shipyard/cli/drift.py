"""`shipyard drift [SERVICE]`: is what runs exactly what was deployed? Exit codes follow
Terraform's convention - 0 clean, 2 drift found, 1 error - so scripts can gate on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from shipyard.cli.common import (
    JsonOut,
    StateDir,
    client,
    out,
    print_error,
    print_json,
    say,
    service_segment,
    text,
)
from shipyard.errors import ShipyardError

EXIT_DRIFT = 2


def drift(service: str | None = typer.Argument(None, help="One service (default: every service)."),
          full: bool = typer.Option(False, "--full", help="Re-hash every file of every image tree."),
          fix: bool = typer.Option(False, "--fix", help="Replace drifted instances with fresh ones "
                                   "(never edits a running instance)."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Compare what runs with what was deployed: release, content, process and unmanaged drift."""
    try:
        api = client(state_dir, timeout=1800)
        names = [service] if service else [s["service"] for s in api.get("/v1/services")["services"]]
        body = {"mode": "full" if full else "metadata", "fix": fix}
        docs = [api.post(f"/v1/services/{service_segment(name)}/drift", body) for name in names]
    except ShipyardError as e:         # 2 means "drift found" here: every error is 1
        print_error(e)
        raise typer.Exit(1) from None
    if as_json:
        print_json(docs if service is None else docs[0])
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
        for what in h.get("quarantined", []):
            say("  [green]quarantined[/] the tampered tree of {what} (kept aside as evidence)", what=what)
        for r in h["replaced"]:
            say("  [green]healed[/] {drifted} -> {successor} (fresh instance from the pristine image)",
                drifted=r["drifted"], successor=r["successor"])
        for iid in h["stopped"]:
            say("  [green]stopped[/] {iid} (its slot should be gone)", iid=iid)
        for iid in h["failed"]:
            say("  [red]not healed[/] {iid}: see `shipyard history` for why", iid=iid)
        say("after the fix:")
        _report(doc["after"], None)
    else:
        _report(doc["report"], doc.get("enforcement"))


def _report(r: dict[str, Any], enforcement: dict[str, Any] | None) -> None:
    when = datetime.fromtimestamp(r["scanned_at"]).strftime("%H:%M:%S")
    what = (f"{r['instances_scanned']} instance(s), {r['files_checked']} file(s)"
            + (f", {r['bytes_hashed'] / 1e6:.1f} MB hashed" if r["bytes_hashed"] else ""))
    verdict = "[green]clean[/]" if r["clean"] else "[red]drift[/] ({n} finding(s))"
    say(f"[bold]{{service}}[/]: {verdict} - {{mode}} scan at {{when}}, {{what}} in {{seconds:.2f}}s",
        service=r["service"], n=len(r["findings"]), mode=r["mode"], when=when, what=what, seconds=r["seconds"])
    if enforcement:
        say("  enforcement: {mode} ({reason})", mode=enforcement["mode"], reason=enforcement["reason"])
    if r["findings"]:
        fleet = any(f.get("host") for f in r["findings"])     # a fleet service: say on which host, and where
        t = Table("KIND", *(("HOST",) if fleet else ()), "INSTANCE", "WHAT", show_lines=False)
        for f in r["findings"]:
            kind = text("unknown", "yellow") if f["kind"] == "unknown" else text(f["kind"])
            host = (text(f.get("host") or "-"),) if fleet else ()
            t.add_row(kind, *host, text(f.get("instance_id") or "-"), text(_what(f)))
        out.print(t)
    for note in r.get("notes", []):
        say("  [dim]{note}[/]", note=note)


HOST_PATHS_SHOWN = 3


def _what(f: dict[str, Any]) -> str:
    """The finding's detail; on a fleet host, the changed files' paths on that host below it."""
    where = (f.get("evidence") or {}).get("host_paths") or []
    if not f.get("host") or not where:
        return str(f["detail"])
    more = len(f.get("paths") or where) - HOST_PATHS_SHOWN
    lines = [f"{f['host']}:{p}" for p in where[:HOST_PATHS_SHOWN]] + ([f"(+{more} more)"] if more > 0 else [])
    return "\n".join([str(f["detail"]), *lines])
