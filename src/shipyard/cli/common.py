"""What every verb group of the CLI shares, one copy each: the consoles and the one way to
print to them, JSON output, the state directory, the API client, and the service-name
rule for URL paths.

Everything printed goes through `say` (or `text` for table cells and titles): the message
template is the program's own and may use Rich markup, while every value put into it is
data (app logs, event messages, service names, paths) and is put in as plain text, never
interpreted as markup and never passed raw to the terminal (escapes are shown, not obeyed)."""

from __future__ import annotations

import json
import re
import string
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.text import Text

from shipyard.cli.plaintext import name_refusal, plain, valid_service_name
from shipyard.errors import ShipyardError, SpecError
from shipyard.paths import ENV_HOME, StatePaths

if TYPE_CHECKING:
    from shipyard.client import ApiClient

out = Console()
err = Console(stderr=True)

StateDir = typer.Option(None, "--state-dir", envvar=ENV_HOME,
                        help="State directory (default ~/.local/state/shipyard).")
JsonOut = typer.Option(False, "--json", help="Print JSON instead of a table.")


# -- untrusted text (plaintext.plain shows control characters instead of obeying them) ---

class _Skeleton(string.Formatter):
    """str.format that puts a numbered placeholder where each field goes and keeps the field
    (formatted with its spec, control characters shown) aside: the data never meets the
    markup parser, which reads backslashes, `\\[` and `:emoji:` codes even in escaped text."""

    def __init__(self) -> None:
        self.fields: list[str] = []

    def format_field(self, value: Any, format_spec: str) -> str:
        self.fields.append(plain(super().format_field(value, format_spec)))
        return f"\ue000{len(self.fields) - 1}\ue001"


_PLACEHOLDER = re.compile("\ue000([0-9]+)\ue001")


def markup(template: str, **values: Any) -> Text:
    """`template` (trusted markup) rendered, with every `{field}` put in as plain text that
    takes the style of the markup around it."""
    skeleton = _Skeleton()
    rendered = Text.from_markup(skeleton.format(template, **values), emoji=False)
    if not skeleton.fields:
        return rendered
    result = Text(style=rendered.style)
    position = 0
    for m in _PLACEHOLDER.finditer(rendered.plain):
        result.append_text(rendered[position:m.start()])
        field = Text(skeleton.fields[int(m.group(1))])
        for span in rendered[m.start():m.end()].spans:
            field.stylize(span.style, 0, len(field))
        result.append_text(field)
        position = m.end()
    result.append_text(rendered[position:])
    return result


def say(template: str, /, *, to: Console | None = None, soft_wrap: bool = False, **values: Any) -> None:
    """Print one message: `template` is trusted markup, each `{field}` is untrusted data."""
    (to or out).print(markup(template, **values), highlight=False, soft_wrap=soft_wrap)


def text(value: object, style: str = "") -> Text:
    """A table cell, rule or status title from data: printed as text, never as markup."""
    return Text(plain(value), style=style)


def print_json(doc: Any) -> None:
    """JSON on stdout (json.dumps escapes every control character, so data cannot act)."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def print_error(e: ShipyardError) -> None:
    say("[red]error:[/] {message}", to=err, message=e.message)
    if e.hint:
        say("  [dim]hint:[/] {hint}", to=err, hint=e.hint)


def print_warnings(doc: dict[str, Any], shown: list[str] | None = None) -> list[str]:
    """The daemon's warnings in an answer (e.g. a secret-looking run.env), on stderr, each
    once: those in `shown` were printed already. Returns every warning shown so far."""
    shown = [] if shown is None else shown
    for w in doc.get("warnings") or []:
        if str(w) not in shown:
            shown.append(str(w))
            say("[yellow]warning:[/] {w}", to=err, w=w)
    return shown


def ts(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S") if t else "-"


def short(image: str | None) -> str:
    return image[:12] if image else "-"


# -- the daemon -------------------------------------------------------------------------

def paths(state_dir: str | None) -> StatePaths:
    return StatePaths.resolve(state_dir)


def client(state_dir: str | None, timeout: float = 600.0) -> ApiClient:
    from shipyard.client import ApiClient
    return ApiClient(paths(state_dir), timeout=timeout)


def service_segment(name: str) -> str:
    """A service name as a URL path segment; a name no spec can have is refused (exit 2)
    before any request, instead of reaching the daemon as a broken or injected request."""
    if not valid_service_name(name):
        raise SpecError(*name_refusal(name))
    return quote(name, safe="")


def segment(value: str) -> str:
    """Any other value (rollout id, instance id) in a URL path or query: percent-encoded."""
    return quote(value, safe="")
