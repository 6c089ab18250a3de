"""The API reads specs in a worker thread: however long a parse takes, the event loop
that answers every other request is not the thread doing it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shipyard.errors import SpecError
from shipyard.server.api import specs
from shipyard.spec import parse_spec

SPEC = "service: shop\nlisten: {listen}\nrun:\n  command: [python, app.py]\n  env: {{SESSION_SECRET: x}}\n"


async def test_specs_are_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[int] = []

    def load(path: str) -> object:
        seen.append(threading.get_ident())
        return parse_spec(SPEC.format(listen="127.0.0.1:8080"), "s.yaml", tmp_path)
    monkeypatch.setattr(specs, "load_spec", load)
    spec, warnings = await specs.checked_spec("/x/s.yaml")
    assert spec.service == "shop" and seen and seen[0] != threading.get_ident()
    assert [w.split(" looks")[0] for w in warnings] == ["s.yaml: run.env.SESSION_SECRET"]
    await specs.read_spec("/x/s.yaml")
    assert len(seen) == 2 and seen[1] != threading.get_ident()


def test_a_listen_host_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    spec = parse_spec(SPEC.format(listen="no-such-host.invalid:8080"), "s.yaml", tmp_path)
    with pytest.raises(SpecError) as info:
        specs.check_resolvable(spec)
    assert info.value.message.startswith("s.yaml: cannot resolve host no-such-host.invalid in listen: "
                                         "no-such-host.invalid:8080 (")
    assert info.value.hint == "use an IP address (like 127.0.0.1) or a name in /etc/hosts"
    for ok in ("127.0.0.1:8080", "localhost:8080", '"[::1]:8080"'):
        specs.check_resolvable(parse_spec(SPEC.format(listen=ok), "s.yaml", tmp_path))

