"""`shipyard hosts drain | undrain | remove HOST`: take a fleet host out of placement (its
instances moved to other hosts, each replacement healthy before the old one leaves), put it
back, or mark an empty one removed. drain waits until nothing runs on the host (--no-wait:
return at once; the daemon carries on either way)."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote

import typer

from shipyard.cli.common import JsonOut, StateDir, client, print_error, print_json, say
from shipyard.cli.hosts import hosts_app
from shipyard.errors import ConflictError, ShipyardError, SpecError

POLL = 0.5


HOST_ARG = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")
"""A host's name (spec/fleet.py: lowercase, digits, dashes) or address (IPv4, IPv6, DNS name)."""


def _path(host: str, verb: str = "") -> str:
    """The host as a URL path segment; anything no spec can name is refused before any request."""
    if not HOST_ARG.fullmatch(host):
        raise SpecError(f"{json.dumps(host)[:100]} is not a fleet host name or address",
                        "`shipyard hosts` lists the hosts by name and address")
    return f"/v1/hosts/{quote(host, safe='')}" + (f"/{verb}" if verb else "")


def _summary(doc: dict[str, Any]) -> None:
    n = len(doc.get("instances") or [])
    say("{name} ({address}): {state}, {n} instance(s) on it", name=doc["name"], address=doc["address"],
        state=doc["state"], n=n)


@hosts_app.command("drain")
def drain(host: str = typer.Argument(..., help="The host's name or address (as in fleet.hosts)."),
          wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until nothing runs on the host."),
          timeout: float = typer.Option(600.0, help="Seconds to wait for the host to be empty."),
          state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """HOST gets nothing new; every instance on it is moved (replacement healthy first, then the old one stops)."""
    try:
        api = client(state_dir)
        doc = api.post(_path(host, "drain"))
        deadline = time.monotonic() + timeout
        seen = -1
        while wait and doc["instances"]:
            if len(doc["instances"]) != seen and not as_json:
                seen = len(doc["instances"])
                say("{name}: {n} instance(s) still to move", name=doc["name"], n=seen)
            if time.monotonic() >= deadline:
                raise ConflictError(f"host {doc['name']} still runs {len(doc['instances'])} instance(s) after "
                                    f"{timeout:g}s", "see `shipyard events SERVICE` for host.drain_failed; the "
                                    "daemon keeps trying (the host stays draining)")
            time.sleep(POLL)
            doc = api.get(_path(host))
    except ShipyardError as e:
        print_error(e)
        raise typer.Exit(1) from None
    if as_json:
        print_json(doc)
        return
    _summary(doc)
    if not doc["instances"]:
        say("[green]drained[/]: nothing runs on {name}; `shipyard hosts remove {name}` takes it out for good, "
            "`shipyard hosts undrain {name}` puts it back", name=doc["name"])


@hosts_app.command("undrain")
def undrain(host: str = typer.Argument(..., help="The host's name or address."),
            state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """HOST takes instances again (after a drain or a remove)."""
    _simple(host, "undrain", state_dir, as_json)


@hosts_app.command("remove")
def remove(host: str = typer.Argument(..., help="The host's name or address."),
           state_dir: str | None = StateDir, as_json: bool = JsonOut) -> None:
    """Mark an empty HOST removed: it takes nothing though the spec lists it (drain it first)."""
    _simple(host, "remove", state_dir, as_json)


def _simple(host: str, verb: str, state_dir: str | None, as_json: bool) -> None:
    try:
        doc = client(state_dir).post(_path(host, verb))
    except ShipyardError as e:
        print_error(e)
        raise typer.Exit(1) from None
    if as_json:
        print_json(doc)
        return
    _summary(doc)
    if doc.get("message"):
        say("{message}", message=doc["message"], soft_wrap=True)
