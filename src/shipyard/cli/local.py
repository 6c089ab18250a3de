"""The verbs that need no daemon: `validate`, `schema`, `build`, `images`, `image verify`.
They read the spec file and the local image store only."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from shipyard.cli.common import JsonOut, StateDir, err, out, paths, print_json, say, short, text, ts

image_app = typer.Typer(no_args_is_help=True, help="Inspect images.")


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(schema)
    app.command()(build)
    app.command()(images)


def validate(file: Path = typer.Argument(..., help="The spec file.")) -> None:
    """Check a spec file; print every problem with its file:line (and check its TLS certificate)."""
    from shipyard.certificates import expiry_warning, read_pair
    from shipyard.spec import load_spec, spec_warnings
    spec = load_spec(file)
    warnings = spec_warnings(spec)
    if spec.tls is not None:       # refused (CertificateError) as plan and deploy would refuse it
        cert = read_pair(spec.resolve_path(spec.tls.cert), spec.resolve_path(spec.tls.key))
        if (w := expiry_warning(cert)) is not None:
            warnings.append(w)
    for warning in warnings:
        say("[yellow]warning:[/] {warning}", to=err, warning=warning)
    strategy = "blue_green" if spec.strategy.blue_green is not None else "canary"
    say("[green]ok[/] {file}: service {service}, {replicas} replica(s), {strategy}", file=file,
        service=spec.service, replicas=spec.replicas, strategy=strategy)


def schema() -> None:
    """Print the JSON Schema of shipyard.yaml (for editors)."""
    from shipyard.spec import json_schema
    print_json(json_schema())


def build(file: Path = typer.Argument(..., help="The spec file."), state_dir: str | None = StateDir,
          no_cache: bool = typer.Option(False, "--no-cache", help="Run the build steps even if no input changed."),
          as_json: bool = JsonOut) -> None:
    """Build the image of a spec into the local image store; print its id."""
    import asyncio

    from shipyard.building import build_input
    from shipyard.images import ImageStore
    from shipyard.spec import load_spec
    spec = load_spec(file)
    store = ImageStore(paths(state_dir).ensure().images)
    log = (lambda _line: None) if as_json else (lambda line: say("[dim]  {line}[/]", to=err, line=line))
    image = asyncio.run(store.build(build_input(spec), log=log, use_cache=not no_cache))
    if as_json:
        print_json({"id": image.id, "service": image.service, "files": image.files, "size": image.size})
    else:
        say("image [bold]{id}[/] ({files} files, {size} bytes)", id=image.id, files=image.files, size=image.size)


def images(service: str | None = typer.Option(None, "--service", "-s"), state_dir: str | None = StateDir,
           as_json: bool = JsonOut) -> None:
    """List images in the local store, newest first."""
    from shipyard.images import ImageStore
    items = ImageStore(paths(state_dir).ensure().images).list(service)
    if as_json:
        print_json([{"id": i.id, "service": i.service, "created_at": i.created_at, "files": i.files,
                     "size": i.size} for i in items])
        return
    t = Table("IMAGE", "SERVICE", "CREATED", "FILES", "SIZE")
    for i in items:
        t.add_row(text(short(i.id)), text(i.service), ts(i.created_at), str(i.files), f"{i.size / 1024:.1f} KiB")
    out.print(t)


@image_app.command("verify")
def image_verify(image_id: str, state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Re-hash an image's tree against its manifest; exit 1 if anything changed."""
    from shipyard.images import ImageStore
    store = ImageStore(paths(state_dir).ensure().images)
    image = store.get(image_id)
    store.materialize(image.id)
    report = store.verify(image.id)
    if as_json:
        print_json({"id": image.id, "ok": report.ok, "changed": report.changed, "missing": report.missing,
                    "added": report.added})
    elif report.ok:
        say("[green]ok[/] image {id} matches its manifest", id=image.id)
    else:
        say("[red]modified[/] image {id}:\n{summary}", id=image.id, summary=report.summary())
    if not report.ok:
        raise typer.Exit(1)
