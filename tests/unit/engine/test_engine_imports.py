"""The engine reaches the world only through its ports: importing it must not load a
concrete adapter (SQLite store, local runtime, embedded router, the data plane) nor the
libraries they use. Run in a fresh interpreter, so what other tests imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_EXACT = ("shipyard.state.sqlite", "shipyard.runtime.local", "shipyard.router.embedded", "sqlite3", "httpx")
FORBIDDEN_PREFIX = ("shipyard.router.dataplane.",)

PROBE = """
import json, sys
import shipyard.engine.controller
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after_import() -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    modules: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return modules


def test_importing_the_engine_loads_no_adapter() -> None:
    modules = loaded_after_import()
    assert "shipyard.engine.controller" in modules, "the probe did not import the engine"
    offending = [m for m in modules
                 if m in FORBIDDEN_EXACT or m.startswith(FORBIDDEN_PREFIX) or m == "shipyard.router.dataplane"]
    assert offending == [], f"import shipyard.engine.controller loaded adapters: {offending}"
