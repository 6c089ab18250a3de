"""The body every `--quick` benchmark smoke test shares: run the script as a user would, in
a temp dir of the test's, read its JSON, and check that no process it started is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.procs import processes_under

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, out_flag: str, tmp: Path, timeout: float,
              exit_codes: tuple[int, ...] = (0,)) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """benchmarks/`script` --quick, its JSON written under `tmp` (named by `out_flag`), TMPDIR
    `tmp` so its own temp dirs are there too. Asserts the exit code is one of `exit_codes` and
    that nothing running names or works in `tmp` afterwards; returns the process and the JSON."""
    out = tmp / f"{Path(script).stem}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", out_flag, str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode in exit_codes, proc.stdout[-3000:] + proc.stderr[-3000:]
    left = processes_under(tmp)
    assert left == [], left
    return proc, json.loads(out.read_text())
