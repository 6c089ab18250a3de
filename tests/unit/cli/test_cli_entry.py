"""The fast rollback entry stays light, and the CLI's one service-name rule is the spec's."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from shipyard.cli.common import service_segment
from shipyard.cli.plaintext import outcome_line, valid_service_name
from shipyard.errors import SpecError
from shipyard.spec.values import ServiceName


def test_importing_the_entry_loads_nothing_else() -> None:
    code = ("import sys; before = set(sys.modules); import shipyard.cli.entry; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["shipyard", "shipyard.cli", "shipyard.cli.entry", "shipyard.cli.plaintext"]


NAMES = ["shop", "a", "shop-2", "0", "x" * 40, "x" * 41, "", "-shop", "shop-", "Shop", "my shop", "caf\u00e9",
         "a/b", "shop\r\nX-Evil: 1", "[/bold]", "shop_1", "..", "%2e", "sh\u0131p"]


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_accepts_exactly_the_names_a_spec_accepts(name: str) -> None:
    try:
        TypeAdapter(ServiceName).validate_python(name)
        spec_ok = True
    except ValidationError:
        spec_ok = False
    assert valid_service_name(name) is spec_ok


@pytest.mark.parametrize("name", [n for n in NAMES if not valid_service_name(n)])
def test_a_name_that_cannot_be_a_service_is_a_usage_error(name: str) -> None:
    with pytest.raises(SpecError) as e:
        service_segment(name)
    assert e.value.exit_code == 2 and "cannot be a service name" in e.value.message


def test_outcome_line() -> None:
    assert outcome_line({"kind": "rollback", "id": "shop-3", "phase": "succeeded", "reason": ""}) == \
        "rollback shop-3: succeeded"
    assert outcome_line({"kind": "rollback", "id": "shop-3", "phase": "failed", "reason": "no slot"}) == \
        "rollback shop-3: failed (no slot)"
