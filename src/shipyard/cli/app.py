"""`shipyard <verb>`: the Typer application, wired from one module per verb group. Every
failure is one clear message and a non-zero exit code; every read verb takes --json."""

from __future__ import annotations

import sys
from enum import StrEnum

import typer

from shipyard.cli import changes, checklist, db, drift, hosts, hosts_state, local, services  # noqa: F401 (hosts_state: its commands join hosts_app)
from shipyard.cli.common import StateDir, print_error
from shipyard.errors import ShipyardError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-downtime deploys for HTTP services on your own machines.")


class RouterKind(StrEnum):
    embedded = "embedded"
    haproxy = "haproxy"


def serve(state_dir: str | None = StateDir,
          listen: str = typer.Option("127.0.0.1:0", help="API address; port 0 picks a free port."),
          api_host: list[str] = typer.Option([], "--api-host", help="Also answer to this Host name "
                                             "(besides localhost and loopback addresses); repeatable."),
          insecure_listen: bool = typer.Option(False, "--insecure-listen", help="Allow a non-loopback --listen "
                                               "without TLS (the token then crosses the network in clear).")) -> None:
    """Run the daemon in the foreground: controller, supervisor, API."""
    from shipyard.server.daemon import run  # the one place the CLI reaches past the API
    run(state_dir, listen, tuple(api_host), insecure_listen)


def demo(keep: bool = typer.Option(False, "--keep", help="Leave the daemon and service running."),
         state_dir: str | None = typer.Option(None, "--state-dir", help="Default: a new temporary dir."),
         router: RouterKind = typer.Option(RouterKind.embedded, "--router",
                                           help="The data plane: shipyard's own proxy, or HAProxy (Debian "
                                                "package haproxy).")) -> None:
    """Deploy the example shop blue-green under traffic, roll back, refuse a broken release."""
    from shipyard.devtools.demo import run_demo
    raise typer.Exit(run_demo(keep=keep, state_dir=state_dir, router=router.value))


# the order `shipyard --help` lists them in
app.command("drift")(drift.drift)
app.command("checklist")(checklist.checklist)
local.register(app)          # validate, schema, build, images; the `image` group comes last
app.command()(serve)
services.register(app)       # deploy, status, promote, pause, resume, abort, retry, rollback, logs, remove
app.command()(demo)
app.add_typer(local.image_app, name="image")
app.add_typer(db.db_app, name="db")
app.add_typer(changes.changes_app)     # plan, apply, history
app.add_typer(hosts.hosts_app)         # hosts, hosts check; hosts drain / undrain / remove (hosts_state)


def main() -> None:
    try:
        rc = app(standalone_mode=False, prog_name="shipyard")
    except ShipyardError as e:
        print_error(e)
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
