"""The README's first command: `shipyard demo` runs the Undo test live and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.devtools.daemonproc import cli_argv
from support.procs import kill_everything_under, processes_under


@pytest.fixture
def tmpdir_env() -> Iterator[Path]:
    """The demo makes its state dir under TMPDIR: give it one of ours, so a leftover shows."""
    d = Path(tempfile.mkdtemp(prefix="sydemo"))
    try:
        yield d
    finally:
        kill_everything_under(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("router", ["embedded", "haproxy"])
def test_demo_deploys_rolls_back_refuses_and_cleans_up(tmpdir_env: Path, router: str) -> None:
    env = {**os.environ, "TMPDIR": str(tmpdir_env), "COLUMNS": "200"}
    env.pop("SHIPYARD_HOME", None)
    res = subprocess.run([*cli_argv(), "demo", "--router", router], capture_output=True, text=True, timeout=240,
                         env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "demo passed" in out and f"({router} router)" in out
    assert re.search(r"deploy v2 blue-green -> slot \w+: succeeded", out), out
    assert re.search(r"`shipyard rollback shop` \(switch back to the warm slot\): rollback shop-3: succeeded; "
                     r"every request after [\d.]+ ms served by v1", out), out
    assert "deploy broken v3: failed" in out
    assert re.search(r"traffic during the v3 attempt: \d+ requests, all served by v1", out), out
    assert re.search(r"failed requests during the whole demo: 0 of \d+", out), out
    assert list(tmpdir_env.iterdir()) == []                  # its state dir is gone ...
    assert processes_under(tmpdir_env) == []                 # ... and nothing it started still runs
