"""`shipyard db ...`: the Database test from the command line. `lint` and `status` need no
daemon (they read the migrations and, when it is reachable, the database); `check` and
`contract` go through the daemon, which knows the live release and runs instances."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from shipyard.cli.common import JsonOut, StateDir, client, err, out, print_json, say, service_segment, text
from shipyard.errors import ShipyardError, SpecError

db_app = typer.Typer(no_args_is_help=True, help="The Database test: lint, rehearse and apply migrations safely.")
DEFAULT_PG = 15


def _is_spec(path: Path) -> bool:
    return path.is_file() and path.suffix in (".yaml", ".yml") and not path.name.endswith(".backfill.yaml")


def _scripts_of(path: Path) -> list[Any]:
    from shipyard.database.sources import from_directory
    from shipyard.database.statements import parse_script
    if path.is_dir():
        return [m.script for m in from_directory(path)]
    if not path.is_file():
        raise SpecError(f"{path} does not exist", "give a spec file, a migrations directory or a .sql file")
    if path.name.endswith(".backfill.yaml"):          # a declared backfill: checked, nothing to judge
        from shipyard.database.backfill_spec import parse_backfill
        parse_backfill(path.read_text(encoding="utf-8"), str(path))
        return []
    return [parse_script(path.read_text(encoding="utf-8"), str(path))]


def print_findings(findings: list[Any]) -> None:
    """One block per finding: where, rule, lock and effect, what is wrong, the safe rewrite."""
    for f in findings:
        sev = "[red]error[/]" if f.blocking else ("[dim]ignored[/]" if f.ignored else "[yellow]warning[/]")
        effect = {"rewrite": ", rewrites the table", "scan": ", scans the table"}.get(f.effect, "")
        old = "  [red]breaks the running release[/]" if f.breaks_old_release else ""
        say(f"{{location}}  {sev}  [bold]{{rule}}[/]{{lock}}{old}", location=f.location, rule=f.rule,
            lock=f" ({f.lock}{effect})" if f.lock else "")
        say("  [dim]{statement}[/]", statement=f.statement)
        say("  {message}", message=f.message)
        if f.ignored:
            say("  [dim]ignored: {ignored}[/]", ignored=f.ignored)
        say("  [green]safe rewrite:[/]")
        for line in f.fix.splitlines():
            say("    {line}", line=line, soft_wrap=True)
        out.print()


@db_app.command("lint")
def lint(path: Path = typer.Argument(None, help="A spec file (its database section), a migrations dir or a .sql file."),
         pg_version: int | None = typer.Option(None, "--pg-version", help="PostgreSQL major version the rules assume "
                                               "(default: the live server's, else 15)."),
         assume_lock_timeout: bool = typer.Option(False, "--assume-lock-timeout",
                                                  help="The runner sets lock_timeout (implied for a spec file)."),
         all_migrations: bool = typer.Option(False, "--all", help="Spec file: lint every migration, not only pending."),
         rules: bool = typer.Option(False, "--rules", help="List the rules and exit."),
         as_json: bool = JsonOut) -> None:
    """Static safety rules on PostgreSQL's grammar; exit 1 if a finding would stop a deploy."""
    from shipyard.database.lint import RULES, lint_scripts
    if rules:
        if as_json:
            print_json([{"id": r.id, "summary": r.summary, "lock": r.lock, "effect": r.effect,
                          "breaks_old_release": r.breaks_old_release, "severity": r.severity}
                         for r in RULES.values()])
        else:
            for r in RULES.values():
                say("[bold]{id}[/] ({severity}): {summary}", id=r.id, severity=r.severity, summary=r.summary)
        return
    if path is None:
        raise SpecError("no file given", "shipyard db lint FILE|DIR (a spec file, a migrations dir or a .sql file)")
    if _is_spec(path):
        findings, scripts, version, note = asyncio.run(_lint_spec(path, all_migrations, pg_version))
    else:
        scripts = _scripts_of(path)
        version = pg_version or DEFAULT_PG
        note = "" if pg_version else f"assuming PostgreSQL {version} (--pg-version to change)"
        findings = lint_scripts(scripts, version, assume_lock_timeout=assume_lock_timeout)
    blocking = [f for f in findings if f.blocking]
    if as_json:
        print_json({"pg_version": version, "scripts": len(scripts), "findings": [f.to_dict() for f in findings],
                     "blocking": len(blocking), "note": note})
    else:
        if note:
            say("[dim]{note}[/]", to=err, note=note)
        print_findings(findings)
        say("{scripts} migration(s), {findings} finding(s), " + ("[red]{blocking} unsafe[/]" if blocking
                                                                  else "[green]none unsafe[/]"),
            scripts=len(scripts), findings=len(findings), blocking=len(blocking))
    if blocking:
        raise typer.Exit(1)


async def _lint_spec(path: Path, all_migrations: bool,
                     pg_version: int | None) -> tuple[list[Any], list[Any], int, str]:
    """(findings, scripts, PostgreSQL major, note). With the database reachable the findings are
    the deploy plan's own (plan_migrations: the pending migrations judged on the live catalog),
    so `db lint SPEC` and a deploy can never disagree. Without it, every migration is judged
    on the grammar alone, and the findings say what the live schema would have settled."""
    from shipyard.database.connect import DatabaseUnavailable, connect, major_of, server_version
    from shipyard.database.lint import lint_scripts
    from shipyard.database.plan import load_source, plan_migrations
    from shipyard.spec import load_spec
    spec = load_spec(path)
    if spec.database is None:
        raise SpecError(f"{path} has no database section", "add database: {url, migrations}, or lint a directory")
    migrations = load_source(spec.database, spec.resolve_path)
    scripts = [m.script for m in migrations]
    try:
        conn = await connect(spec.database.url)
    except DatabaseUnavailable as e:
        version = pg_version or DEFAULT_PG
        note = f"database unreachable ({e.message}): linting every migration without the live schema"
        if not pg_version:
            note += f"; assuming PostgreSQL {version} (--pg-version to change)"
        return lint_scripts(scripts, version, assume_lock_timeout=True), scripts, version, note
    try:
        if all_migrations:
            # applied ones are already in the catalog, so they are judged on the grammar alone
            version = pg_version or major_of(await server_version(conn))
            return (lint_scripts(scripts, version, assume_lock_timeout=True), scripts, version,
                    "every migration, without the live schema (--all)")
        plan = await plan_migrations(conn, migrations, pg_version=pg_version)
        pending = [m.script for m in plan.pending]
        return (plan.findings, pending, pg_version or major_of(plan.pg_version),
                f"{len(plan.pending)} pending of {len(migrations)}, judged on the live schema (--all for every one)")
    finally:
        await conn.close()


@db_app.command("status")
def status(file: Path = typer.Argument(..., help="The spec file."), as_json: bool = JsonOut) -> None:
    """Applied, pending (expand now / held back as contract) and unsafe migrations of a spec's database."""
    from shipyard.database.connect import connect
    from shipyard.database.plan import load_source, plan_migrations
    from shipyard.spec import load_spec
    spec = load_spec(file)
    if spec.database is None:
        raise SpecError(f"{file} has no database section")
    db = spec.database

    async def run() -> Any:
        conn = await connect(db.url)
        try:
            return await plan_migrations(conn, load_source(db, spec.resolve_path))
        finally:
            await conn.close()

    plan = asyncio.run(run())
    if as_json:
        print_json(plan.to_dict())
        return
    t = Table("VERSION", "NAME", "STATE", "PHASE", "APPLIED")
    for m in plan.migrations:
        row = plan.applied.get(m.version)
        state = ("applied" if row and row.complete else f"partial {row.statements_applied}/{row.statements_total}"
                 if row else "pending")
        if m in plan.held:
            state = "held (contract)"
        elif m in plan.expand:
            state = "pending (expand)"
        if (progress := plan.backfills.get(m.version)) and m in plan.expand:
            state = (f"backfill: {progress['rows_done']} rows done, {progress['key']} up to {progress['last_key']} "
                     f"of {progress['stop_key']}")
        t.add_row(*(text(v) for v in (m.version, m.name, state, plan.phases[m.version],
                                      row.applied_at.strftime("%Y-%m-%d %H:%M") if row else "-")))
    out.print(t)
    if plan.changed:
        say("[red]changed after being applied:[/] {changed}", to=err, changed=", ".join(plan.changed))


@db_app.command("check")
def check(file: Path = typer.Argument(..., help="The spec file."),
          contract: bool = typer.Option(False, "--contract", help="Rehearse the held-back contract migrations."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Rehearse the pending migrations on a scratch copy of the database (locks, rewrites,
    stalls), then run the live and the new release on it; exit 1 if anything fails."""
    from shipyard.spec import load_spec
    load_spec(file)
    api = client(state_dir, timeout=1800)
    say("[dim]rehearsing on a scratch copy (this starts the releases)...[/]", to=err)
    doc = api.post("/v1/db/check", {"spec_path": str(file.resolve()), "contract": contract})
    if as_json:
        print_json(doc)
    else:
        print_check(doc)
    if not doc["ok"]:
        raise typer.Exit(1)


def print_check(doc: dict[str, Any]) -> None:
    plan = doc["plan"]
    say("[bold]{service}[/] image {image}: {pending} pending; expand now: {expand}; held back (contract): {held}"
        + (" [dim](rehearsing the contract ones)[/]" if doc.get("contract") else ""), service=doc["service"],
        image=doc["image"][:12], pending=len(plan["pending"]), expand=", ".join(plan["expand"]) or "-",
        held=", ".join(plan["held"]) or "-")
    for f in doc.get("blocking", []):
        say("[red]unsafe[/] {source}:{line} {rule}: {message} (fix: {fix})", source=f["source"], line=f["line"],
            rule=f["rule"], message=f["message"], fix=f["fix"])
    if doc.get("held_renames"):
        say("[red]a deploy would stop[/]: {why}", why=doc["held_renames"], soft_wrap=True)
    reh = doc.get("rehearsal")
    if reh is None:
        say("nothing to rehearse")
    else:
        t = Table("STATEMENT", "TIME ON COPY", "LOCKS", "HELD ON COPY", "HELD AT LIVE SIZE", "WAITED", "REWROTE")
        for s in reh["check"]["statements"]:
            locks = ", ".join(f"{tbl}: {mode}" for tbl, mode in _locks(s))
            t.add_row(*(text(v) for v in (
                f"{Path(s['source']).name}:{s['line']} {s['statement'][:60]}", f"{s['duration']:.3f}s",
                locks or "-", f"{s.get('locks_held', 0.0):.3f}s",
                "-" if s.get("locks_held_live") is None else f"{s['locks_held_live']:.3f}s",
                f"{s.get('lock_wait', 0.0):.3f}s",
                ", ".join(s.get("rewritten") or []) or "-")))
        out.print(t)
        estimates = {(e["table"], e["kind"]): e for e in reh["check"].get("estimates", [])}
        for p in reh["check"].get("probes", []):
            e = estimates.get((p["table"], p["kind"]))
            if e is None:
                say("  probe {table} {kind}: longest stall {stall:.3f}s, {count} queries", table=p["table"],
                    kind=p["kind"], stall=p["longest_stall"], count=p["count"])
            else:
                say("  {table} {kind}s: stall {stall:.3f}s ({basis}); the copy's probe: {probe:.3f}s, {count} "
                    "queries", table=p["table"], kind=p["kind"], stall=e["seconds"], basis=e["basis"],
                    probe=p["longest_stall"], count=p["count"])
        for r in (reh.get("compat") or {}).get("results", []):
            mark = "[green]ok[/]" if r["ok"] else "[red]FAILED[/]"
            say(f"  {{role}} release {{image}}: {mark} {{detail}}", role=r["role"], image=r["image_id"][:12],
                detail=r["detail"])
    if doc["ok"]:
        say("[green]database check passed[/]")
    else:
        say("[red]database check failed[/]: {reasons}",
            reasons="; ".join((reh or {}).get("reasons", []) or ["see above"]))


def _locks(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(table, strongest mode) per table the statement locked."""
    return [(table, modes[0] if isinstance(modes, list) else str(modes))
            for table, modes in sorted((s.get("locks") or {}).items()) if modes]


@db_app.command("contract")
def contract(service: str, allow_unsafe: str | None = typer.Option(None, "--allow-unsafe", help="Apply unsafe "
             "contract migrations anyway; the reason goes to the audit log."),
             state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Apply the held-back contract migrations, once no instance of an older release runs
    and the rollback window is closed."""
    name = service_segment(service)
    api = client(state_dir, timeout=1800)
    if allow_unsafe is not None and not allow_unsafe.strip():
        raise ShipyardError("--allow-unsafe needs a reason", 'e.g. --allow-unsafe "table is empty in production"')
    doc = api.post(f"/v1/services/{name}/db/contract", {"allow_unsafe": allow_unsafe or ""})
    if as_json:
        print_json(doc)
    elif doc["applied"]:
        say("contract: applied {applied}", applied=", ".join(doc["applied"]))
    else:
        say("{message}", message=doc.get("message", "nothing to apply"))
