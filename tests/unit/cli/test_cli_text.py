"""Untrusted text reaches the terminal as text: markup is not interpreted, escapes are shown
instead of obeyed, and nothing a user typed can break or extend the CLI's own HTTP request."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from shipyard.cli import common
from shipyard.cli.plaintext import plain
from shipyard.client import ApiClient
from shipyard.errors import SpecError
from shipyard.paths import StatePaths

HOSTILE = {
    "osc52": ("copy \x1b]52;c;cm0gLXJmIH4=\x07 done", "copy ^[]52;c;cm0gLXJmIH4=^G done"),
    "clear": ("\x1b[2J\x1b[H gone", "^[[2J^[[H gone"),
    "c1-csi": ("a\x9b31mb", "a\\x9b31mb"),
    "bidi": ("user\u202etxt.exe", "user\\u202etxt.exe"),
    "cr": ("ok\rFAKE", "ok^MFAKE"),
    "del-bs": ("a\x7f\x08b", "a^?^Hb"),
    "surrogate": ("x\udc80", "x\\udc80"),
}


@pytest.mark.parametrize("raw,shown", HOSTILE.values(), ids=HOSTILE.keys())
def test_escapes_are_shown_not_obeyed(raw: str, shown: str) -> None:
    assert plain(raw) == shown


def test_ordinary_text_is_unchanged() -> None:
    text = "caf\u00e9 \u65e5\u672c \U0001f680\tcol\nnext line [ok]"
    assert plain(text) == text
    assert plain("crlf\r\nline") == "crlf\nline"


def recording(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(common, "out", Console(file=buf, width=200, color_system=None))
    return buf


MARKUP = ["[ALERT] [/usr/sbin/x.main()] boom", "[/bold]", "[red]not red[/red]", "[link=http://x]y[/link]", "\\[x]",
          "C:\\dir\\"]


@pytest.mark.parametrize("data", MARKUP)
def test_markup_in_data_is_printed_as_text(data: str, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = recording(monkeypatch)
    common.say("[bold]{name}[/]: {message:>10}", name=data, message=data)
    assert buf.getvalue() == f"{data}: {data:>10}\n"


@pytest.mark.parametrize("a,b", [("C:\\", "[/bold]"), ("x\\", "\\y"), ("\\\\", "[b]"), ("z\\", ""),
                                 ("\\\\\\", "\\[red]"), ("q\\", "[1]"), (":thumbs_up:", "\\:x:")])
def test_fields_next_to_each_other(a: str, b: str, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = recording(monkeypatch)
    common.say("[dim]{a}{b}[/] {a}", a=a, b=b)
    assert buf.getvalue() == f"{a}{b} {a}\n"


def test_fields_take_the_style_around_them() -> None:
    t = common.markup("[bold]{a}[/] and [red]x{b}y[/]", a="[/bold]", b="\\")
    assert t.plain == "[/bold] and x\\y"
    styled = {i: "".join(str(s.style) for s in t.spans if s.start <= i < s.end) for i in range(len(t.plain))}
    assert styled == {i: "bold" if i < 7 else "red" if i >= 12 else "" for i in range(15)}


def test_table_cells_and_escapes_from_data(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = recording(monkeypatch)
    common.out.print(common.text("[/bold] \x1b[2J"))
    common.say("{x}", x="\x1b]52;c;AAAA\x07")
    assert buf.getvalue() == "[/bold] ^[[2J\n^[]52;c;AAAA^G\n"


def test_warnings_are_printed_once_each_on_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=buf, width=200, color_system=None))
    shown = common.print_warnings({"warnings": ["run.env.DB_PASSWORD looks like a secret; use secret_env"]})
    common.print_warnings({"warnings": ["run.env.DB_PASSWORD looks like a secret; use secret_env", "[/bold]"]},
                          shown)
    common.print_warnings({"rollout": {}})
    assert buf.getvalue() == ("warning: run.env.DB_PASSWORD looks like a secret; use secret_env\n"
                              "warning: [/bold]\n")


@pytest.mark.parametrize("path", ["/v1/services/my shop", "/v1/services/shop\r\nX-Evil: 1", "/v1/services/caf\u00e9",
                                  "v1/services"])
def test_the_client_never_sends_a_broken_request_line(path: str, tmp: object) -> None:
    from pathlib import Path
    root = Path(str(tmp))
    (root / "api.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 1}))
    (root / "token").write_text("t\n")
    client = ApiClient(StatePaths.resolve(root))
    with pytest.raises(SpecError, match="refusing to send a request"):
        client.get(path)        # refused before connecting (port 9 would say "does not answer")


def test_other_path_values_are_percent_encoded() -> None:
    assert common.segment("a b/c\r\n\u00e9") == "a%20b%2Fc%0D%0A%C3%A9"
